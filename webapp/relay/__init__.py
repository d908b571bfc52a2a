"""One answer in flight: the request it was asked with, the relay from the provider
to the client (opening, retries before the first byte, deadlines, the watchdog),
its events and their wire formats. Knows nothing of HTTP requests or the history."""
