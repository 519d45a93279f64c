"""The tests' reference CloudWatch Logs client (boto3), independent of the agent's SDK.

    cloudwatch.py streams ENDPOINT GROUP           # the group's stream names, one a line
    cloudwatch.py events ENDPOINT GROUP STREAM     # every event: "<timestamp ms> <message>"
    cloudwatch.py create-group ENDPOINT GROUP
    cloudwatch.py delete-group ENDPOINT GROUP
    cloudwatch.py delete-stream ENDPOINT GROUP STREAM
    cloudwatch.py iam-user ENDPOINT USER ACTION...  # an IAM user allowed these actions:
                                                    # prints "<key id> <secret key>"
"""
import json
import sys

import boto3


def client(endpoint):
    return boto3.client(
        "logs",
        endpoint_url=endpoint,
        aws_access_key_id="flowlog-test",
        aws_secret_access_key="flowlog-test-secret",
        region_name="us-east-1",
    )


def iam_user(endpoint, user, actions):
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="flowlog-test",
        aws_secret_access_key="flowlog-test-secret",
        region_name="us-east-1",
    )
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.put_user_policy(UserName=user, PolicyName="flowlog", PolicyDocument=json.dumps(policy))
    print(key["AccessKeyId"], key["SecretAccessKey"])


def main(argv):
    if argv[1] == "iam-user":
        return iam_user(argv[2], argv[3], argv[4:])
    command, endpoint, group = argv[1], argv[2], argv[3]
    logs = client(endpoint)
    if command == "streams":
        paginator = logs.get_paginator("describe_log_streams")
        for page in paginator.paginate(logGroupName=group):
            for stream in page["logStreams"]:
                print(stream["logStreamName"])
    elif command == "events":
        stream = argv[4]
        token = None
        # Bounded: a test's stream holds far fewer than a thousand pages.
        for _ in range(1000):
            arguments = dict(logGroupName=group, logStreamName=stream, startFromHead=True)
            if token:
                arguments["nextToken"] = token
            page = logs.get_log_events(**arguments)
            for event in page["events"]:
                print(f"{event['timestamp']} {event['message']}")
            if not page["events"] or page.get("nextForwardToken") == token:
                break
            token = page.get("nextForwardToken")
    elif command == "create-group":
        logs.create_log_group(logGroupName=group)
    elif command == "delete-group":
        logs.delete_log_group(logGroupName=group)
    elif command == "delete-stream":
        logs.delete_log_stream(logGroupName=group, logStreamName=argv[4])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
