//! Pairing of a Source and a Target connector: SPAKE2 relayed by the hub, then key pinning. Not built yet.
