//! The organization worker: keeps this process's organization cache in step with the database
//! (changes made by the CLI or another replica) and runs the durable organization jobs — "stop
//! every open session" after a disable (Admin-Reset), which goes on past individual failures
//! and does nothing for an organization re-enabled before (or while) it runs. A job interrupted
//! by a crash is still pending and runs again at start-up: stopping is idempotent. Operator
//! commands run in another process (`session terminate`) leave a job here too, so the stop
//! happens in the portal that serves the open pages and sends the accounting.

use super::Organizations;
use crate::{
    access_session::{now_ms, AccessSessions},
    storage::{Audit, OrganizationJob, Storage},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the database is asked whether organizations changed or jobs are waiting.
pub const POLL: Duration = Duration::from_millis(500);

/// How long a job claimed by this process is left to it by other replicas. A job that runs
/// longer (the stop job of a large organization) renews its claim every quarter of the lease;
/// a replica that dies leaves the job to another once the lease runs out (which stops nothing
/// twice).
const JOB_LEASE_MS: i64 = 30_000;

/// How long the jobs a pass claims are left to this process before it starts each (its lease
/// renewed to [`JOB_LEASE_MS`] then): a pass runs its jobs one after another, and a second
/// organization disabled together with a large one had its Stops wait behind the first's job
/// — up to the lease — while other replicas had nothing to do (the guard review's L2 of
/// session 81). Now another replica's pass takes it once this hold runs out. Longer than a
/// few passes ([`POLL`]), so a job waiting out its back-off here stays here.
const JOB_CLAIM_HOLD_MS: i64 = 2_000;
/// How often a long stop job reloads the organizations changed elsewhere (a pass does it
/// before its jobs; a job of many sessions would otherwise hold that up until it ends).
const CACHE_REFRESH_MS: i64 = 500;
/// Sessions a stop job stops in one write (one transaction, one commit). Bounded so that the
/// write holds up sign-ins for milliseconds, and the job checks its claim, the re-enable and
/// the cache between writes.
const STOPS_AT_ONCE: usize = 256;

/// Runs organization jobs and refreshes the cache. Cheap to clone.
#[derive(Clone)]
pub struct OrganizationWorker {
    storage: Storage,
    organizations: Arc<Organizations>,
    sessions: AccessSessions,
    wake: Arc<Notify>,
    /// Jobs that did not finish: (failures so far, not before). In memory: a restart retries
    /// at once, which is what a restart is for.
    retry_at: Arc<Mutex<HashMap<i64, (u32, Instant)>>>,
}

/// Wait before running an unfinished job again: 1 s, 2 s, 4 s, then every 5 s. Short: a
/// disabled organization's sessions wait on it for their Stops — after a database outage or
/// a full disk the stop goes within seconds of the writes working again, not a minute later
/// (the guard review's note of session 81); a pass that fails costs a claim and a log line.
fn job_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(3)).min(JOB_BACKOFF_MAX)
}

/// [`job_backoff`]'s cap.
const JOB_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a job run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every open session was stopped (how many).
    Stopped(usize),
    /// The organization was active again: nothing done.
    SkippedReenabled,
    /// This process's claim ran out (it stalled past the lease) and another replica took the
    /// job over: this one stopped where it was and leaves the rest to it.
    HandedOver {
        /// Stopped before the hand-over.
        stopped: usize,
    },
    /// It could not finish (the database failed): the job stays pending and runs again.
    Incomplete {
        /// Stopped this time.
        stopped: usize,
        /// Failures this time (a failed write or read ends the run at once: 1).
        failed: usize,
    },
}

impl OrganizationWorker {
    /// Wires the worker.
    pub fn new(
        storage: Storage,
        organizations: Arc<Organizations>,
        sessions: AccessSessions,
    ) -> Self {
        OrganizationWorker {
            storage,
            organizations,
            sessions,
            wake: Arc::new(Notify::new()),
            retry_at: Arc::default(),
        }
    }

    /// Asks the worker to look now (after a change made in this process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One pass: refresh the cache, run what is pending. Returns the jobs run.
    pub async fn tick(&self) -> anyhow::Result<Vec<(OrganizationJob, JobOutcome)>> {
        let now = Instant::now();
        let claimed_at = now_ms();
        let jobs = match self
            .storage
            .claim_organization_jobs(claimed_at, claimed_at + JOB_CLAIM_HOLD_MS)
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                // The claim is a write: while writes fail and reads work (a full disk, a
                // read-only standby), the cache still follows the stored flags (pages, the
                // captive API, logins waiting on a silent server).
                if self.refresh_cache().await {
                    self.sessions.look_again();
                }
                return Err(e.into());
            }
        };
        // After the claim: a job's change (a disable) was committed with the job, so the
        // cache shows it before the job's effects do (a page the job ends, then reloaded,
        // already says the organization is disabled).
        // A failed refresh does not hold up the claimed jobs (they read the flag they act on
        // from the database): returning would renew their claims on every pass without ever
        // running them.
        let changed = self.refresh_cache().await;
        let mut done = Vec::new();
        // A job no longer among this process's (finished, or another replica holds it) has
        // no retry left here.
        self.retry_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| jobs.iter().any(|job| job.id == *id));
        for job in jobs {
            let waiting = self
                .retry_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&job.id)
                .is_some_and(|(_, at)| *at > now);
            if waiting {
                continue;
            }
            // The jobs run one after another on one claim: each starts only while it is still
            // this process's, with its lease renewed (an earlier long job may have used it up,
            // and another replica taken this one over).
            match self
                .storage
                .renew_organization_job(job.id, now_ms() + JOB_LEASE_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(job = job.id, organization = %job.organization_id,
                        "organization job taken over by another replica; left to it");
                    self.retry_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&job.id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(job = job.id, error = %e, "renewing an organization job's claim failed; it runs on a later pass");
                    continue;
                }
            }
            // One job's failure never holds up the others: it is retried with a back-off.
            let outcome = match self.run_job(&job).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(job = job.id, organization = %job.organization_id, kind = %job.kind,
                        error = %crate::portal_backend::error_chain(e.as_ref()), "organization job failed; will retry");
                    JobOutcome::Incomplete {
                        stopped: 0,
                        failed: 1,
                    }
                }
            };
            let mut retry_at = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(outcome, JobOutcome::Incomplete { .. }) {
                let failures = retry_at.get(&job.id).map_or(0, |(n, _)| *n) + 1;
                retry_at.insert(job.id, (failures, Instant::now() + job_backoff(failures)));
            } else {
                retry_at.remove(&job.id);
            }
            drop(retry_at);
            done.push((job, outcome));
        }
        if changed || !done.is_empty() {
            self.sessions.look_again();
        }
        Ok(done)
    }

    /// Reloads the organizations changed elsewhere (another process, another replica) into
    /// this process's cache. A failure is logged; the next call tries again.
    /// True if an organization changed.
    async fn refresh_cache(&self) -> bool {
        let was_active: std::collections::HashMap<String, bool> = self
            .organizations
            .all()
            .iter()
            .map(|org| (org.id.clone(), org.active))
            .collect();
        match self.organizations.refresh(&self.storage).await {
            Ok(changed) => {
                for id in &changed {
                    // An enable or disable made elsewhere (the CLI, another replica) is said as
                    // such in this process's log too, as one made through it is (black-box
                    // tester M: an enable read as "settings reloaded").
                    let now = self.organizations.get(id).map(|org| org.active);
                    match (was_active.get(id).copied(), now) {
                        (Some(false), Some(true)) => tracing::warn!(organization = %id,
                            "organization enabled (changed elsewhere: the CLI or another replica)"),
                        (Some(true), Some(false)) => tracing::warn!(organization = %id,
                            "organization disabled (changed elsewhere: the CLI or another replica)"),
                        _ => {
                            tracing::info!(organization = %id, "organization changed: cached settings reloaded")
                        }
                    }
                }
                !changed.is_empty()
            }
            Err(e) => {
                // Every pass (twice a second) while the database is away: a line per 5 s.
                static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                if let Some(left_out) = LOG.admit() {
                    tracing::error!(error = %crate::portal_backend::error_chain(&e), similar_left_out = left_out,
                        "reloading changed organizations failed; retrying on the next pass");
                }
                false
            }
        }
    }

    async fn still_disabled(&self, organization_id: &str) -> anyhow::Result<bool> {
        Ok(self.storage.organization_active(organization_id).await? != Some(true))
    }

    async fn run_job(&self, job: &OrganizationJob) -> anyhow::Result<JobOutcome> {
        if job.kind == "terminate_session" {
            let stopped = match job.access_session_id {
                Some(id) => self.sessions.stop_asked_at(id, job.created_at).await?,
                None => false,
            };
            // Not stopped here: ended already — possibly by an Admin-Reset on the job's behalf
            // (a refresh or the expiry pass ends a session an operator's stop waits for, dated
            // when it was asked for) or by its organization's disable asked for before it (dated
            // then, before the job: the second read's L4), which the audit says rather than
            // "was not active" (the job was queued only for an active session). Who made it is
            // not known here (another operator's stop, a Disconnect-Request too).
            let reset_before = match (stopped, job.access_session_id) {
                (false, Some(id)) => self.sessions.record(id).await?.is_some_and(|s| {
                    !s.active
                        && s.terminate_cause
                            == Some(i64::from(crate::radius::terminate_cause::ADMIN_RESET))
                }),
                _ => false,
            };
            let outcome = match (stopped, reset_before) {
                (true, _) => "stopped",
                (false, true) => "stopped before the job ran (Admin-Reset)",
                (false, false) => "was not active",
            };
            match job.access_session_id {
                Some(session) if stopped => {
                    tracing::warn!(session, "session terminated by the operator (Admin-Reset)")
                }
                session => tracing::info!(
                    session,
                    outcome,
                    "operator's terminate: the session had ended already (nothing sent for it by the job)"
                ),
            }
            self.storage
                .finish_organization_job(job, outcome, now_ms())
                .await?;
            return Ok(JobOutcome::Stopped(usize::from(stopped)));
        }
        let org = job.organization_id.as_str();
        let mut stopped = 0usize;
        let mut reenabled = !self.still_disabled(org).await?;
        let mut renewed_at = now_ms();
        let mut refreshed_at = renewed_at;
        if !reenabled {
            loop {
                // A long job keeps its claim, so no other replica starts it over meanwhile.
                let now = now_ms();
                // Nor does it hold up what other organizations' changes made elsewhere show on
                // this process's pages (their flag, settings and secrets in the cache).
                if now - refreshed_at >= CACHE_REFRESH_MS {
                    self.refresh_cache().await;
                    refreshed_at = now;
                }
                if now - renewed_at >= JOB_LEASE_MS / 4 {
                    if !self
                        .storage
                        .renew_organization_job(job.id, now + JOB_LEASE_MS)
                        .await?
                    {
                        tracing::warn!(organization = org, job = job.id, stopped,
                            "organization job taken over by another replica (this one stalled past its claim); leaving the rest to it");
                        // The replica that finishes the job audits its outcome (once); the
                        // stops made here before are recorded under an action of their own.
                        if let Err(e) = self
                            .storage
                            .audit(&Audit {
                                at: now_ms(),
                                actor: "system",
                                action: &format!("job.{}.handed_over", job.kind),
                                organization_id: Some(org),
                                detail: serde_json::json!({ "job": job.id, "stopped": stopped }),
                            })
                            .await
                        {
                            tracing::error!(job = job.id, error = %e, "auditing an organization job's hand-over failed");
                        }
                        return Ok(JobOutcome::HandedOver { stopped });
                    }
                    renewed_at = now;
                }
                // A batch of sessions is stopped in one write, and only while the organization
                // is still disabled (a re-enable committed before it keeps them all). Their
                // Stops go out through the delivery loop, paced like any other row. One
                // session at a time, each waiting for its own commit, 10,000 took 3.6 s.
                let batch = match self
                    .sessions
                    .stop_disabled(org, job.id, job.created_at, STOPS_AT_ONCE)
                    .await
                {
                    Ok(batch) => batch,
                    Err(e) => {
                        // What was stopped is stopped (each end audited); the job stays pending
                        // and runs again for the rest.
                        tracing::error!(organization = org, job = job.id, stopped, error = %e,
                            "stopping a disabled organization's sessions failed; the job will retry the rest");
                        return Ok(JobOutcome::Incomplete { stopped, failed: 1 });
                    }
                };
                if batch.is_empty() {
                    // Nothing left, or re-enabled midway: the rest are left alone.
                    reenabled = match self.still_disabled(org).await {
                        Ok(disabled) => !disabled,
                        Err(e) => {
                            tracing::error!(organization = org, job = job.id, stopped, error = %e,
                                "reading a disabled organization's state failed; the job will run again");
                            return Ok(JobOutcome::Incomplete { stopped, failed: 1 });
                        }
                    };
                    break;
                }
                stopped += batch.len();
            }
        }
        let outcome = if reenabled && stopped == 0 {
            JobOutcome::SkippedReenabled
        } else {
            JobOutcome::Stopped(stopped)
        };
        match &outcome {
            JobOutcome::Incomplete { .. } | JobOutcome::HandedOver { .. } => {}
            JobOutcome::SkippedReenabled => {
                // The enable said how many sessions keep running (and closed the job).
                tracing::info!(
                    organization = org,
                    "organization re-enabled before its sessions were stopped: nothing done"
                );
                self.storage
                    .finish_organization_job(job, "skipped: re-enabled", now_ms())
                    .await?;
            }
            JobOutcome::Stopped(n) => {
                tracing::warn!(
                    organization = org,
                    sessions = n,
                    "disabled organization: open sessions stopped (Admin-Reset)"
                );
                // The job's outcome: every session it stopped, in earlier runs too. None: any
                // the disable ended before the job reached them (the expiry pass ends a session
                // due meanwhile as the disable would, Admin-Reset at its moment) were ended on
                // its behalf, each audited as such — not "stopped 0" as if there had been none
                // (black-box tester S's D6).
                let all = usize::try_from(job.stopped).unwrap_or(0).saturating_add(*n);
                let said = if all == 0 {
                    "stopped none itself: any open sessions were ended at the disable's moment before the job reached them (each audited as session.end)".to_string()
                } else {
                    format!("stopped {all} sessions (any due meanwhile were ended at the disable's moment by the expiry pass, each audited as session.end)")
                };
                self.storage
                    .finish_organization_job(job, &said, now_ms())
                    .await?;
            }
        }
        Ok(outcome)
    }

    /// Runs until `shutdown`: a pass on every wake-up and every [`POLL`].
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.tick().await {
                // Every pass fails alike while the database is away: a line per 5 s at most.
                static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                if let Some(left_out) = LOG.admit_if_away(crate::storage::away_in(e.as_ref())) {
                    tracing::error!(error = %crate::portal_backend::error_chain(e.as_ref()), similar_left_out = left_out, "organization worker pass failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::job_backoff;
    use std::time::Duration;

    #[test]
    fn unfinished_jobs_back_off_up_to_five_seconds() {
        assert_eq!(job_backoff(1), Duration::from_secs(1));
        assert_eq!(job_backoff(2), Duration::from_secs(2));
        assert_eq!(job_backoff(3), Duration::from_secs(4));
        assert_eq!(job_backoff(4), Duration::from_secs(5));
        assert_eq!(job_backoff(40), Duration::from_secs(5));
    }
}
