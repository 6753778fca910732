"""
Cluster mode: many rawsvc nodes share one PostgreSQL spool (issue 15; the
design is C{shared/CLUSTER.md}).  It is on when C{[service] spool} is a
C{postgresql://} URI; the C{[cluster]} table tunes it and is an error with
any other spool.  SQLite and the in-memory spool are unchanged.

Public API (names kept stable for the tests and tools of other slices):

Config, C{[cluster]} (L{rawsvc.cluster.settings.CLUSTER_OPTIONS}):
  - C{node} (str, default: the host name): this node's name in
    C{rawsvc_nodes.node_name} and in logs.
  - C{lease_ttl} (seconds, default 10): how long a renewed lease is valid.
  - C{lease_margin} (seconds, default 3, < C{lease_ttl}): a node fences
    itself C{lease_ttl - lease_margin} seconds after the last renewal it
    I{sent} that succeeded (local monotonic clock).
  - C{reap_interval} (seconds, default 2): renew, reap, claim and adopt
    this often even when no NOTIFY arrives.

Tables (schema version 3, L{rawsvc.spool.pg_schema}): C{rawsvc_nodes}
(plus C{lease_until} kept by renewals), C{rawsvc_destinations} (per-printer
C{next_ticket}), C{rawsvc_deliveries} (one per C{send_tcp} reached, keyed
by C{(job_id, run, action_index)}: C{run} is the job's, bumped by each
operator retry or reprint; an C{on_error} action N has index C{-1 - N}; state
C{queued}/C{sending}/C{done}/C{failed}, C{holder}, C{fence}, C{claims},
C{ticket}; the partial unique index C{rawsvc_one_sending_per_destination}).

Modules:
  - L{rawsvc.cluster.sql}: the SQL (enqueue with tickets, claim, fenced
    finish, renew, reap, requeue, adopt, counts), plain functions of a
    psycopg connection, usable from tests' threads.
  - L{rawsvc.cluster.lease}: L{Lease}, the heartbeat and self-fence.
  - L{rawsvc.cluster.node}: L{ClusterNode} (an C{IService}): the lease,
    the reaper, the LISTEN thread, the claim loop (L{DeliveryWorker}).
  - L{rawsvc.cluster.pool}: L{ClusterPool}, the L{IDestinationPool} whose
    C{deliver()} enqueues a delivery row and waits for its result.

NOTIFY channels: C{rawsvc_work} (payload: destination), C{rawsvc_done}
(payload: delivery id), C{rawsvc_requests} (payload: request id).

Metrics (C{/metrics}):
  - C{rawsvc_cluster_lease_age_seconds} (gauge): seconds since this node's
    last successful renewal was sent.
  - C{rawsvc_cluster_lease_valid} (gauge, 1/0): the lease is held (not fenced).
  - C{rawsvc_cluster_takeovers_total} (counter): deliveries this node
    requeued from dead incarnations plus jobs it adopted.
  - C{rawsvc_cluster_fences_total} (counter): times this node fenced itself.
  - C{rawsvc_cluster_possible_repeats_total} (counter): deliveries this node
    claimed again after a takeover.
  - C{rawsvc_cluster_deliveries{state="queued|sending|done|failed"}} (gauge):
    rows of C{rawsvc_deliveries} by state, cluster-wide (counted every
    C{reap_interval}).
C{/healthz} carries a C{"cluster"} object (node, incarnation, lease_age,
lease_valid, takeovers, claimed, repeats, fences, deliveries).
C{/healthz} is unhealthy while the lease is lost (fenced) or the database
is out of reach.

Log lines (grep-able, with structured fields C{node}, C{incarnation},
C{job_id}, C{destination}):
  - C{"cluster: node {node} joined as incarnation {incarnation}"}
  - C{"cluster: fenced: ..."}: past the local lease deadline or a renewal
    refused; printer connections aborted, claiming stopped.
  - C{"cluster: takeover: requeued {n} deliveries of dead incarnations"} and
    C{"cluster: takeover: adopted job {job_id}"}
  - C{"cluster: possible repeat job {job_id} ..."}: a delivery claimed
    again after a takeover (at-least-once), or a finish whose claim was lost.
  - C{"cluster: node {node} left"}: a clean stop (state C{left}).
  - C{"cluster: cannot finish delivery {id}: ...; trying again"}: a finish
    (or release) the database did not answer is retried, fenced, until it
    is answered or the lease is lost; and C{"cluster: requeued {n}
    deliveries this node held without running them"}: a claim committed
    whose reply the connection lost goes back in line at the next round.

Limits of this step: a C{send_tcp} with several destinations (a printer
pool) delivers from the node that runs the flow, through its own queues
(one connection per printer within that node only).  A node fenced while
its flows wait keeps waiting on their delivery rows and takes back their
jobs when it joins again; a job adopted meanwhile by another node runs
its remaining actions there too (at-least-once).
"""
