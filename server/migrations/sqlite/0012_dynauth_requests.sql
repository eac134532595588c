-- Dynamic Authorization requests (RFC 5176) answered, by source address and Request
-- Authenticator, with the answer given: a retransmission or a captured copy replayed while its Event-Timestamp
-- still passes the replay check gets that answer and is not acted on again — also after a
-- restart. Rows expire at `until` (deleted as new requests come).
CREATE TABLE dynauth_requests (
    request TEXT PRIMARY KEY,
    until   INTEGER NOT NULL,
    reply   BLOB NOT NULL
);
CREATE INDEX dynauth_requests_until ON dynauth_requests (until);
