"""One module per node kind: gateway, matcher, ticker, persistence."""
