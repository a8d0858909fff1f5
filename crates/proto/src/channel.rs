//! The end-to-end encrypted channel between two paired connectors (Noise). Not built yet.
