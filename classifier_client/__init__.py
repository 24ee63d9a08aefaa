"""Client for the ResNet18 classification endpoint, as a module and as a CLI.

Command line: `python -m classifier_client --help`.

from classifier_client import Client
with Client("https://<id>.execute-api.<region>.amazonaws.com/dev/", api_key) as client:
    top5 = client.classify("cat.jpg")["predictions"]
"""

from .client import ApiError, ClassifierError, Client, RetryPolicy, iter_images
from .config import Target, read_outputs_file, resolve_target

__all__ = [
    "ApiError",
    "ClassifierError",
    "Client",
    "RetryPolicy",
    "Target",
    "iter_images",
    "read_outputs_file",
    "resolve_target",
]
