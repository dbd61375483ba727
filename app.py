#!/usr/bin/env python3
"""CDK entry point (cdk.json runs it): builds the collector stack from context and synthesizes it."""

from stacks.application import create_app

create_app().synth()
