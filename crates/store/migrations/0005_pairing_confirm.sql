-- A Source's pairing is confirmed by the first end-to-end session with its Target
-- (docs/spec.md §4). Until then the Target may never have created its connector (its Confirm was
-- lost with the link), so the operator may still cancel it. Pairings made before this
-- migration had sessions: confirmed.
ALTER TABLE connectors ADD COLUMN pairing_confirmed INTEGER NOT NULL DEFAULT 1;
