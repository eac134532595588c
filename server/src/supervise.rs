//! Supervised background tasks: a task that panics is logged and restarted after a pause (a
//! second: expiry, accounting and the organizations' stops are not held down longer), and while
//! it is down its name is listed in [`TaskHealth`], which `/readyz` reports; `/metrics` counts
//! each task's crashes, so a crash loop is seen. A task that returns normally (shutdown) is not
//! restarted.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::task::JoinHandle;

/// Pause before a crashed task is started again (keeps a crash loop from spinning).
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Which supervised tasks are down right now, and how often each has crashed. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct TaskHealth {
    /// Task name → (currently down, crashes so far). A std Mutex: held for map operations only.
    tasks: Arc<Mutex<BTreeMap<String, (bool, u64)>>>,
}

impl TaskHealth {
    /// Names of the tasks that crashed and are not running again yet.
    pub fn down(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, (down, _))| *down)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Crashes of `name` so far.
    pub fn crashes(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |(_, n)| *n)
    }

    /// Crashes so far of each supervised task, 0 for one that has not crashed (`/metrics`: a
    /// series exists from the start, so an alert on its rate sees the first crash).
    pub fn all_crashes(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .map(|(name, (_, n))| (name.clone(), *n))
            .collect()
    }

    fn set(&self, name: &str, down: bool) {
        let mut tasks = self.lock();
        let entry = tasks.entry(name.to_string()).or_insert((false, 0));
        if down {
            entry.1 += 1;
        }
        entry.0 = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (bool, u64)>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `make()`'s future as a task, as background work ([`crate::storage::background`]);
/// restarts it whenever it panics, until it returns.
pub fn spawn<F, Fut>(health: TaskHealth, name: impl Into<String>, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = name.into();
    health.lock().entry(name.clone()).or_insert((false, 0));
    tokio::spawn(async move {
        loop {
            match tokio::spawn(crate::storage::background(make())).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    health.set(&name, true);
                    tracing::error!(task = %name, crashes = health.crashes(&name),
                        "background task crashed; restarting it");
                    tokio::time::sleep(RESTART_PAUSE).await;
                    health.set(&name, false);
                }
                // Cancelled through its runtime shutting down: nothing to restart.
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_crashed_task_is_reported_down_then_restarted() {
        let health = TaskHealth::default();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = spawn(health.clone(), "flaky", move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run crashes");
                }
            }
        });
        // The first run crashes: the task is down during the restart pause.
        while health.down().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(health.down(), vec!["flaky".to_string()]);
        handle.await.expect("supervisor ends when the task returns");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once");
        assert!(health.down().is_empty());
        assert_eq!(health.crashes("flaky"), 1);
        // Every supervised task has a count, from 0.
        spawn(health.clone(), "steady", || async {}).await.unwrap();
        assert_eq!(
            health.all_crashes(),
            [("flaky".to_string(), 1), ("steady".to_string(), 0)]
        );
    }

    #[tokio::test]
    async fn a_supervised_task_and_what_it_starts_on_its_lane_are_background_work() {
        use crate::storage::{in_background, same_lane};
        assert!(!in_background());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        spawn(TaskHealth::default(), "loop", move || {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(in_background());
                let inner = record.clone();
                tokio::spawn(same_lane(async move {
                    inner.lock().unwrap().push(in_background());
                }))
                .await
                .unwrap();
                // A task started without it is not (as a request's is not).
                let plain = record.clone();
                tokio::spawn(async move { plain.lock().unwrap().push(in_background()) })
                    .await
                    .unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![true, true, false]);
        // A request's task starting one on its lane: not background work either.
        assert!(!tokio::spawn(same_lane(async { in_background() }))
            .await
            .unwrap());
    }
}
