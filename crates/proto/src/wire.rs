//! The hub link wire format: versioned binary frames between a site and the hub. Not built yet.
