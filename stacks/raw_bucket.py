"""The bucket the collectors write into."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct


class RawBucket(Construct):
    """SSE-S3, private, TLS-only, no ACLs; kept on `cdk destroy` unless `destroy_data` opts into deletion."""

    def __init__(self, scope: Construct, construct_id: str, *, destroy_data: bool) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=cdk.RemovalPolicy.DESTROY if destroy_data else cdk.RemovalPolicy.RETAIN,
            auto_delete_objects=destroy_data,
        )
        cdk.Validations.of(self.bucket).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-S1",
                reason="Only the collector instances can write here (PutObject on two prefixes) and nobody "
                "reads through this stack; access logging would need a second bucket and costs per request. "
                "Enable CloudTrail S3 data events if an audit trail is required.",
            )
        )
