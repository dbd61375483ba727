"""Builds the CDK app; `app.py` and the tests share this, so the tests synthesize what `cdk` deploys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.collector_stack import CollectorStack
from stacks.settings import Settings

STACK_NAME = "BinanceTradeCollector"


def create_app(context: Mapping[str, Any] | None = None, *, outdir: str | None = None) -> cdk.App:
    """Under the CDK CLI, context arrives through the environment; tests pass cdk.json's instead."""
    app = cdk.App(context=dict(context) if context is not None else None, outdir=outdir)
    CollectorStack(
        app,
        STACK_NAME,
        settings=Settings.from_context(app.node),
        description="Binance trade collector: EC2 instances stream trades into an S3 bucket",
    )
    # Unacknowledged findings make synth fail, in the CLI and in the tests alike.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
