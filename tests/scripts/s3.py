"""The tests' reference S3 client (boto3), independent of the agent's object_store.

    s3.py create-bucket ENDPOINT BUCKET
    s3.py download ENDPOINT BUCKET DIR     # every object to DIR/<key>; prints the keys
"""
import os
import sys

import boto3

def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="flowlog-test",
        aws_secret_access_key="flowlog-test-secret",
        region_name="us-east-1",
    )

def main(argv):
    command, endpoint, bucket = argv[1], argv[2], argv[3]
    s3 = client(endpoint)
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket)
    elif command == "download":
        directory = argv[4]
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                key = item["Key"]
                path = os.path.join(directory, key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                s3.download_file(bucket, key, path)
                print(key)
    else:
        sys.exit(f"unknown command {command}")

if __name__ == "__main__":
    main(sys.argv)
