"""The one place that talks AMQP 0-9-1 (through pika): URL parsing, the client, message frames."""
