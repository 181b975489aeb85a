"""The HTTP APIs: checkout for publishers (purchases and refunds, decided through the stream) and
administration for the platform's operators."""
