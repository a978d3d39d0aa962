//! HTTP routes: health probes and Prometheus metrics (predictions come in later issues).
