"""An S3-compatible server for the media tests (tests/it/media_s3.rs): moto's server on
127.0.0.1:PORT with request signatures checked, one IAM user allowed s3:*, and BUCKET made
with that user's key.

Prints one JSON line per event on stdout: {"event": "ready", "access_key_id", "secret_access_key"}
once serving; then, for each line "list" read on stdin, {"event": "objects", "keys": [...]}
(every key in BUCKET). Stops at the end of stdin.

Usage: server.py PORT BUCKET
"""

import json
import os
import sys

# moto reads this at import: the first three requests (the IAM set-up below) are not
# checked; every later one must carry a valid Signature Version 4 of a known key.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402


# moto prints its own messages on stdout: they go to stderr, and stdout carries only events.
EVENTS = sys.stdout
sys.stdout = sys.stderr


def say(value):
    EVENTS.write(json.dumps(value) + "\n")
    EVENTS.flush()


def main():
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    anonymous = dict(
        endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="conduit")
    key = iam.create_access_key(UserName="conduit")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="conduit", PolicyName="media", PolicyDocument=json.dumps(policy))
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    s3.create_bucket(Bucket=bucket)
    say({"event": "ready", "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]})
    for line in sys.stdin:
        if line.strip() == "list":
            keys = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys.extend(item["Key"] for item in page.get("Contents", []))
            say({"event": "objects", "keys": sorted(keys)})
    server.stop()


if __name__ == "__main__":
    main()
