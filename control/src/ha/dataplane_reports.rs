//! Which data plane a device's replication report came from.
//!
//! The HA view of a device (`HaView::status`, shown by `replica list`, `device show`,
//! `ha-status` and the metrics) is the engine's report from the last exchange with the data
//! plane. When that data plane exits and a new one starts, the old report must not be shown
//! any more: it said `synchronized` and serving while the new engine, which has no lease and
//! perhaps no configuration yet, answers NOT READY. So every change of the data plane
//! connection (an exit, a new data plane's Hello) starts a new incarnation and drops every
//! report; a report is stored only if the connection it was asked on is still the current
//! one. Until the new data plane reports, the device shows `unknown` ("no replication status
//! from the data plane").

use std::sync::atomic::{AtomicU64, Ordering};

use tandem_config::ipc::HaDeviceStatus;

use super::{HaState, HaView};

/// Counts data plane connection changes in this process.
#[derive(Debug, Default)]
pub struct Incarnation(AtomicU64);

impl HaState {
    /// The current data plane incarnation: read before asking the data plane, passed to
    /// [`HaState::store_report`] with its answer.
    pub(crate) fn dataplane_incarnation(&self) -> u64 {
        self.dataplane.0.load(Ordering::SeqCst)
    }

    /// The data plane connection changed (the data plane exited, or a new one connected):
    /// every report held came from another data plane and is dropped.
    pub(crate) fn dataplane_changed(&self) {
        // Bumped before the views are locked: a report whose store takes the lock after the
        // drop below sees the new incarnation and is refused (see `store_report`).
        self.dataplane.0.fetch_add(1, Ordering::SeqCst);
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        for v in views.values_mut() {
            v.status = None;
        }
    }

    /// Stores `status` in `view` (whose views lock the caller holds, `view_mut`) if it was
    /// asked for in incarnation `asked_in`, which is still the current one. Returns whether
    /// it was stored.
    pub(crate) fn store_report(
        &self,
        view: &mut HaView,
        asked_in: u64,
        status: HaDeviceStatus,
    ) -> bool {
        if self.dataplane_incarnation() != asked_in {
            return false;
        }
        view.status = Some(status);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(serving: bool) -> HaDeviceStatus {
        HaDeviceStatus {
            node_id: 1,
            config: None,
            serving,
            meta: Default::default(),
            partners: Vec::new(),
        }
    }

    fn status(ha: &HaState, device: &str) -> Option<bool> {
        ha.view_mut(device, |v| v.status.as_ref().map(|s| s.serving))
    }

    #[test]
    fn a_new_data_plane_drops_the_old_report_until_it_reports_itself() {
        let ha = HaState::default();
        let first = ha.dataplane_incarnation();
        assert!(ha.view_mut("d1", |v| ha.store_report(v, first, report(true))));
        assert!(ha.view_mut("d2", |v| ha.store_report(v, first, report(true))));
        assert_eq!(status(&ha, "d1"), Some(true));

        // The data plane exits: nothing is shown for any device.
        ha.dataplane_changed();
        assert_eq!(status(&ha, "d1"), None);
        assert_eq!(status(&ha, "d2"), None);

        // An exchange asked of the old data plane that returns only now is refused, also
        // after the new data plane connected.
        assert!(!ha.view_mut("d1", |v| ha.store_report(v, first, report(true))));
        ha.dataplane_changed();
        assert!(!ha.view_mut("d1", |v| ha.store_report(v, first, report(true))));
        assert_eq!(status(&ha, "d1"), None);

        // The new data plane's own report is stored.
        let second = ha.dataplane_incarnation();
        assert_ne!(second, first);
        assert!(ha.view_mut("d1", |v| ha.store_report(v, second, report(false))));
        assert_eq!(status(&ha, "d1"), Some(false));
    }
}
