"""moto's standalone server for the CloudWatch Logs tests, as strict as CloudWatch where moto is
not: PutLogEvents refuses (InvalidParameterException) a call of more than 10,000 events, of
more than 1,048,576 bytes (message bytes plus 26 per event), with events out of time order,
or spanning more than 24 hours. Each accepted call appends "<group> <stream> <events> <bytes>"
to the file named by $FLOWLOG_CALLS_LOG, and each of its events
"<group>\t<stream>\t<timestamp>\t<message>" to $FLOWLOG_EVENTS_LOG: what the server accepted
over its whole life, across restarts (which forget what it stored), so a test can see how the
agent cut its calls and that no event came twice. With $FLOWLOG_FAIL_EVERY=N, every Nth
PutLogEvents call is refused before anything is stored, alternately as throttled
(ThrottlingException, 400) and as unavailable (ServiceUnavailableException, 503); each refusal
appends "<group> <stream> refused <code>" to the calls file. With moto's
$INITIAL_NO_AUTH_ACTION_COUNT, requests are authenticated (SigV4 checked against the IAM users'
keys) and authorized (their policies) as IAM does, and refusals are answered as CloudWatch
Logs answers them, in JSON (moto writes XML): AccessDeniedException, InvalidSignatureException,
UnrecognizedClientException. After SIGUSR1 the server is "frozen": every PutLogEvents call from
then on hangs, never answered and never stored (a call already past that check completes and is
answered), so a test knows that what the agent abandons was not stored.

    cloudwatch_server.py HOST PORT
"""
import os
import signal
import sys
import threading

from moto.core.exceptions import JsonRESTError, _RESTError
from moto.logs import exceptions, models
from moto.logs.responses import LogsResponse
from moto.server import main

MAX_EVENTS = 10_000
MAX_BYTES = 1_048_576
OVERHEAD = 26
MAX_SPAN_MS = 24 * 3600 * 1000

original = models.LogsBackend.put_log_events
FAIL_EVERY = int(os.environ.get("FLOWLOG_FAIL_EVERY", "0"))
calls = 0
FROZEN = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: FROZEN.set())


class Refused(JsonRESTError):
    def __init__(self, status, code, message="flowlog test server: refused on purpose"):
        super().__init__(code, message)
        self.code = status


JSON_CODES = {
    "AccessDenied": "AccessDeniedException",
    "SignatureDoesNotMatch": "InvalidSignatureException",
    "InvalidClientTokenId": "UnrecognizedClientException",
}
authorize = LogsResponse._authenticate_and_authorize_normal_action


def json_authorize(self, resource="*"):
    try:
        authorize(self, resource)
    except _RESTError as error:
        raise Refused(error.code, JSON_CODES.get(error.error_type, error.error_type), error.message)


LogsResponse._authenticate_and_authorize_normal_action = json_authorize


def strict_put_log_events(self, log_group_name, log_stream_name, log_events):
    global calls
    if FROZEN.is_set():
        threading.Event().wait()
    calls += 1
    if FAIL_EVERY and calls % FAIL_EVERY == 0:
        status, code = [(400, "ThrottlingException"), (503, "ServiceUnavailableException")][
            (calls // FAIL_EVERY) % 2
        ]
        with open(os.environ["FLOWLOG_CALLS_LOG"], "a") as log:
            log.write(f"{log_group_name} {log_stream_name} refused {code}\n")
        raise Refused(status, code)
    size = sum(len(event["message"].encode()) + OVERHEAD for event in log_events)
    stamps = [event["timestamp"] for event in log_events]
    if len(log_events) > MAX_EVENTS:
        raise exceptions.InvalidParameterException(f"{len(log_events)} events in one call")
    if size > MAX_BYTES:
        raise exceptions.InvalidParameterException(f"{size} bytes in one call")
    if stamps != sorted(stamps):
        raise exceptions.InvalidParameterException(
            "Log events in a single PutLogEvents request must be in chronological order."
        )
    if stamps and stamps[-1] - stamps[0] > MAX_SPAN_MS:
        raise exceptions.InvalidParameterException("events span more than 24 hours")
    result = original(self, log_group_name, log_stream_name, log_events)
    with open(os.environ["FLOWLOG_EVENTS_LOG"], "a") as log:
        for event in log_events:
            log.write(
                f"{log_group_name}\t{log_stream_name}\t{event['timestamp']}\t{event['message']}\n"
            )
    with open(os.environ["FLOWLOG_CALLS_LOG"], "a") as log:
        log.write(f"{log_group_name} {log_stream_name} {len(log_events)} {size}\n")
    return result


models.LogsBackend.put_log_events = strict_put_log_events

if __name__ == "__main__":
    main(["-H", sys.argv[1], "-p", sys.argv[2]])
