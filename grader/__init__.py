"""tunegrade: grades practical LLM fine-tuning tasks against level rubrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunegrade")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
