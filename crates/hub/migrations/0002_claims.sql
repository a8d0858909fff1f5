-- The pairings each site has declared for its own connectors (the Claims frame of wire
-- version 2). A connector-to-connector route is forwarded only when both ends have claimed
-- each other. Kept so that a restarted hub enforces them before the sites reconnect; a
-- site's rows are replaced whole by its next Claims frame. Addresses only, never keys.
CREATE TABLE claims (
    site           TEXT NOT NULL,
    connector      TEXT NOT NULL,
    peer_site      TEXT NOT NULL,
    peer_connector TEXT NOT NULL,
    claimed_at     INTEGER NOT NULL,
    PRIMARY KEY (site, connector, peer_site, peer_connector)
) WITHOUT ROWID;
