"""The bucket the collectors write into, and the promises it holds their writes to by its own policy."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

# What every collector upload sends (collector/s3_uploader.py); the bucket refuses the writers anything else.
SSE_ALGORITHM = "AES256"
STORAGE_CLASS = "STANDARD"


class RawBucket(Construct):
    """SSE-S3 (SSE-C blocked), private, TLS-only, no ACLs, unversioned (docs/operations.md says why); kept on
    `cdk destroy` unless `destroy_data` opts into deletion."""

    def __init__(self, scope: Construct, construct_id: str, *, destroy_data: bool) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            blocked_encryption_types=[s3.BlockedEncryptionType.SSE_C],
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

    def hold_writes(self, writer: iam.IRole, *, endpoint: ec2.IGatewayVpcEndpoint) -> list[iam.PolicyStatement]:
        """Deny `writer` every PutObject that breaks what the collector promises, whatever its own policy
        allows: so stolen instance credentials cannot overwrite, re-encrypt, archive, or write from elsewhere.

        Each statement denies one broken promise, so that a refusal names it. Multipart uploads are refused as
        a side effect, which the collector never uses: CreateMultipartUpload and UploadPart are authorized as
        s3:PutObject and cannot carry If-None-Match.
        """
        promises = {
            # Write-once: S3 refuses the PUT (412) when the key exists; without the header it would overwrite.
            "DenyWriterOverwrites": {"Null": {"s3:if-none-match": "true"}},
            # A missing header also matches: the collector always names SSE-S3.
            "DenyWriterOtherEncryption": {"StringNotEquals": {"s3:x-amz-server-side-encryption": SSE_ALGORITHM}},
            # SSE-C sends no x-amz-server-side-encryption header, only the customer-algorithm one.
            "DenyWriterCustomerKeys": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}},
            # No header means STANDARD; a header naming any other class (GLACIER, ...) is refused.
            "DenyWriterOtherStorageClass": {"Null": {"s3:x-amz-storage-class": "false"},
                                            "StringNotEquals": {"s3:x-amz-storage-class": STORAGE_CLASS}},
            "DenyWriterOutsideTheVpc": {"StringNotEquals": {"aws:SourceVpce": endpoint.vpc_endpoint_id}},
        }
        return self._deny_puts(writer, {sid: (["*"], conditions) for sid, conditions in promises.items()})

    def hold_job_writes(self, writer: iam.IRole, *, write_once_prefixes: Sequence[str]) -> list[iam.PolicyStatement]:
        """Deny the daily job's `writer` what breaks the collectors' promises where they apply to it: no overwrite
        under `write_once_prefixes`, SSE-S3 only, STANDARD only. Not the VPC (the function runs outside it, to
        reach Binance without a NAT gateway). Unlike the collectors, the job uploads the curated day in parts;
        UploadPart carries no encryption header, so the encryption promise is held where the header is sent
        (the bucket's default encryption is SSE-S3 anyway, and SSE-C is blocked)."""
        return self._deny_puts(writer, {
            "DenyJobOverwrites": ([f"{prefix}*" for prefix in write_once_prefixes],
                                  {"Null": {"s3:if-none-match": "true"}}),
            "DenyJobOtherEncryption": (["*"], {"StringNotEqualsIfExists": {
                "s3:x-amz-server-side-encryption": SSE_ALGORITHM}}),
            "DenyJobCustomerKeys": (["*"], {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}}),
            "DenyJobOtherStorageClass": (["*"], {"Null": {"s3:x-amz-storage-class": "false"},
                                                 "StringNotEquals": {"s3:x-amz-storage-class": STORAGE_CLASS}}),
        })

    def _deny_puts(self, writer: iam.IRole, denials: dict[str, tuple[list[str], dict[str, dict[str, str]]]]
                   ) -> list[iam.PolicyStatement]:
        statements = [
            iam.PolicyStatement(sid=sid, effect=iam.Effect.DENY, principals=[writer], actions=["s3:PutObject"],
                                resources=[self.bucket.arn_for_objects(key) for key in keys], conditions=conditions)
            for sid, (keys, conditions) in denials.items()
        ]
        for statement in statements:
            self.bucket.add_to_resource_policy(statement)
        return statements
