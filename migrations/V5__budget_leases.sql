-- Each router replica's lease on each server's connection budget. A replica holds at
-- most its lease's connections to the server, and the leases on a server never add up
-- past its max_connections: a replica raises its own lease only under the server row's
-- lock, within what the others leave unclaimed, and lowers it only once its connections
-- fit. A replica's leases go with its row (stopped, or gone quiet for three heartbeats).
CREATE TABLE budget_leases (
    replica_id   uuid NOT NULL REFERENCES router_replicas (id) ON DELETE CASCADE,
    server_id    bigint NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    connections  integer NOT NULL CHECK (connections >= 0),
    PRIMARY KEY (replica_id, server_id)
);
