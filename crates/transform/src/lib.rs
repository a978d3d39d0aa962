//! DataFusion SQL stages over micro-batches and the UDF registry.
