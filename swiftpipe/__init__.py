"""swiftpipe: YAML recipes over ms-swift for structured-extraction fine-tuning."""

__version__ = "0.1.0"
