//! The queue: the spool on disk, the scheduler in memory (rebuilt from the
//! spool at start), and the delivery loop that starts every due attempt
//! within `relay_queue.max_deliveries`.

use std::sync::Arc;

use authrelay_config::Config;
use tokio::sync::Semaphore;

use crate::attempt::Outcome;
use crate::delivery::Delivery;
use crate::scheduler::Scheduler;
use crate::spool::Spool;

pub struct Queue {
    pub(crate) cfg: Config,
    pub(crate) spool: Spool,
    pub(crate) scheduler: Scheduler,
    pub(crate) delivery: Delivery,
    slots: Arc<Semaphore>,
}

impl Queue {
    pub fn open(cfg: Config) -> Result<Arc<Self>, anyhow::Error> {
        let delivery = Delivery::new(&cfg)?;
        let spool = Spool::open(&cfg.spool_dir())?;
        let scheduler = Scheduler::new(&cfg.relay_queue);
        for id in spool.ids()? {
            let queued_at = spool.envelope(&id).ok().map(|env| env.queued_at);
            scheduler.recover(&id, queued_at, &spool.state(&id));
        }
        let (scheduled, queued) = scheduler.counts();
        if scheduled > 0 {
            tracing::info!(
                messages = scheduled,
                "recovered queued messages from the spool"
            );
        }
        if !scheduler.background() {
            tracing::info!(
                messages = queued,
                "delivery_mode=queue-only: messages wait for `queue flush` or ETRN"
            );
        }
        let slots = Arc::new(Semaphore::new(cfg.relay_queue.max_deliveries));
        Ok(Arc::new(Queue {
            cfg,
            spool,
            scheduler,
            delivery,
            slots,
        }))
    }

    /// The delivery loop: start every due message, then sleep until woken
    /// (a new message, a flush) or a second has passed.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.scheduler.update_gauges();
            for id in self.scheduler.due() {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                self.scheduler.start(&id);
                let q = self.clone();
                tokio::spawn(async move {
                    let outcome = q.attempt(&id).await;
                    q.schedule(&id, outcome);
                    q.scheduler.finish(&id);
                    drop(permit);
                });
            }
            self.scheduler.wait().await;
        }
    }

    /// What comes after an attempt.
    fn schedule(&self, id: &str, outcome: Outcome) {
        match outcome {
            Outcome::Gone => self.scheduler.forget(id),
            Outcome::Held => self.scheduler.hold(id),
            Outcome::Deferred { next_attempt } => self.scheduler.deferred(id, next_attempt),
            Outcome::RetryAt(at) => self.scheduler.retry_at(id, at),
        }
    }
}
