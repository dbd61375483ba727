"""The two local S3 servers the end-to-end scenarios run on: what the collector's identity may do on each."""

import boto3
import botocore.exceptions
import pytest

from tests.conftest import BUCKET


@pytest.mark.parametrize("s3", ["seaweedfs"], indirect=True)
def test_on_seaweedfs_the_collector_may_write_once_encrypted_and_may_not_read_or_list(s3):
    env = s3.env()
    collector = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_REGION"],
                             aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                             aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    put = {"Bucket": BUCKET, "Key": "raw/x.jsonl.gz", "ServerSideEncryption": "AES256", "IfNoneMatch": "*"}
    assert collector.put_object(Body=b"first", **put)["ServerSideEncryption"] == "AES256"
    with pytest.raises(botocore.exceptions.ClientError) as overwrite:
        collector.put_object(Body=b"second", **put)
    assert overwrite.value.response["Error"]["Code"] == "PreconditionFailed"
    for refused in (lambda: collector.get_object(Bucket=BUCKET, Key="raw/x.jsonl.gz"),
                    lambda: collector.list_objects_v2(Bucket=BUCKET)):
        with pytest.raises(botocore.exceptions.ClientError) as denied:
            refused()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    stored = s3.client().get_object(Bucket=BUCKET, Key="raw/x.jsonl.gz")
    assert (stored["ServerSideEncryption"], stored["Body"].read()) == ("AES256", b"first")
