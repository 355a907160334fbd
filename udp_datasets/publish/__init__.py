"""Publishing: verify a protected folder against its manifest, render its dataset card, push it to the Hub."""
