//! The sans-IO sync state machines: sequence numbers, batches, acknowledgements, resume, gaps. Not built yet.
