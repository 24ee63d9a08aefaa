"""CDK stacks and constructs of the ResNet serving endpoint (see docs/infrastructure.md)."""
