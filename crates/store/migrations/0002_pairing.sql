-- Pairing (docs/spec.md §4). The Source keeps its one-time code only while the countdown runs:
-- SPAKE2 needs the code itself, and the row forgets it when the window closes. Each paired
-- connector keeps its long-term static key and the peer's pinned public key.
ALTER TABLE connectors ADD COLUMN pairing_code TEXT;
ALTER TABLE connectors ADD COLUMN pairing_failed_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connectors ADD COLUMN static_private BLOB;
ALTER TABLE connectors ADD COLUMN static_public BLOB;
ALTER TABLE connectors ADD COLUMN peer_static_public BLOB;
