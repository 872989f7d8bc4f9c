//! fio as a second, verifying host in the namespace scenarios (`ha_netns*.rs`): one area of
//! the device that only fio writes, in slices through one node while a failure happens,
//! then read back and checked block by block through every node. The pieces the scenario
//! files share; `e2e::fio` runs fio itself.

use std::path::Path;
use std::time::{Duration, Instant};

use super::fio::{self, Fio, Retry, SlicedWrite, VerifyJob};
use super::host_io::Model;
use super::netns_cluster::ClusterNode;
use super::scenario::ms;
use crate::netns::{Member, Topology};

/// fio's area and pace. The writers of the scenarios stay below 12.5 MiB.
#[derive(Clone, Copy, Debug)]
pub struct FioArea {
    /// Byte offset and length.
    pub offset: u64,
    pub size: u64,
    pub block: u64,
    /// One fio job each, so that a retryable answer costs one slice only.
    pub slices: u64,
    pub rate_iops: u32,
    /// Bound on one fio run (a slice with its pause, or a read-back).
    pub timeout: Duration,
}

/// 16..20 MiB in 8 slices, 200 writes/s: 1024 blocks take at least 5 s, so writes started
/// before a fault span it.
pub const DEFAULT_AREA: FioArea = FioArea {
    offset: 16 << 20,
    size: 4 << 20,
    block: 4096,
    slices: 8,
    rate_iops: 200,
    timeout: Duration::from_secs(120),
};

impl FioArea {
    pub fn blocks(&self) -> u64 {
        self.size / self.block
    }

    /// The verify job on the area through `n`'s first portal, LUN 0 of `device`.
    pub fn job(&self, n: &ClusterNode, device: &str, seed: u64) -> VerifyJob {
        VerifyJob {
            name: format!("verify-{seed}"),
            filename: fio::iscsi_filename(n.portals[0], &n.iqn(device), 0),
            initiator: format!("iqn.2026-11.io.tandem.test:fio-{}", n.name),
            offset: self.offset,
            size: self.size,
            block_size: self.block,
            iodepth: 4,
            rate_iops: Some(self.rate_iops),
            seed,
        }
    }

    /// Starts the writing slices through `n` from `host`'s namespace.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        fio: &Path,
        topo: &Topology,
        host: Member,
        n: &ClusterNode,
        device: &str,
        seed: u64,
        retry: Retry,
    ) -> SlicedWrite {
        let slices = self.job(n, device, seed).slices(self.slices);
        SlicedWrite::start_retrying(fio, &topo.ns(host), slices, self.timeout, retry)
    }

    /// Waits for the slices through `through`: every slice without error (after the
    /// retries its policy allows), every block written once and checked, and writes still
    /// going on more than a second after `t_fault` (they spanned the fault). Prints the
    /// numbers; returns the longest write and the slices written again.
    pub fn finish_writes(
        &self,
        w: SlicedWrite,
        t_fault: Instant,
        through: &str,
    ) -> (Duration, u32) {
        let started = w.started;
        let slices = w.finish();
        for s in &slices {
            eprintln!(
                "fio slice {} through {through}: {} run(s), last: {}",
                s.job.name,
                s.attempts,
                s.run.summary.line()
            );
        }
        let retries: u32 = slices.iter().map(|s| s.attempts - 1).sum();
        let writes: u64 = slices.iter().map(|s| s.run.summary.writes).sum();
        // Over every run, also those a retryable answer ended (the fault's pause is there).
        let longest = slices
            .iter()
            .flat_map(|s| s.failed.iter().chain([&s.run]))
            .map(|r| r.summary.write_lat_max)
            .max()
            .unwrap_or_default();
        let slowest = slices
            .iter()
            .map(|s| s.run.took + s.failed.iter().map(|r| r.took).sum::<Duration>())
            .max()
            .unwrap_or_default();
        let ended = slices.last().map_or(started, |s| s.ended);
        eprintln!(
            "MEASURE fio verify writes through {through} across the fault: {} slices, {writes} writes in {:?}, longest write {}, slowest slice {} (all its runs), slices written again after UNIT ATTENTION / NOT READY: {retries}, errors left: {}",
            slices.len(),
            ended - started,
            ms(longest),
            ms(slowest),
            slices.iter().filter(|s| s.run.summary.error != 0).count()
        );
        if let Some(bad) = slices
            .iter()
            .find(|s| s.run.summary.error != 0 || !s.run.exit_ok)
        {
            panic!(
                "fio through {through}: slice {} failed for good: {}",
                bad.job.name,
                bad.run.stderr.trim()
            );
        }
        assert_eq!(
            slices.len() as u64,
            self.slices,
            "fio through {through}: slices written"
        );
        for s in &slices {
            s.run.expect_clean(
                &format!("slice {} through {through}", s.job.name),
                s.job.blocks(),
            );
        }
        assert!(
            started < t_fault && ended > t_fault + Duration::from_secs(1),
            "fio's writes through {through} ended {:?} after the fault: they did not span it",
            ended.saturating_duration_since(t_fault)
        );
        (longest, retries)
    }

    /// Reads back what the slices with `seed` wrote through each of `nodes` in turn (one fio,
    /// one job per slice): every block must pass its check (0 verify errors). Then the area
    /// of `image` (any node's, once the images are compared) goes into `model`, so that the
    /// scenario's whole-disk comparison covers it too.
    #[allow(clippy::too_many_arguments)]
    pub fn read_back(
        &self,
        fio: &Path,
        topo: &Topology,
        host: Member,
        nodes: &[&ClusterNode],
        device: &str,
        seed: u64,
        what: &str,
    ) {
        for n in nodes {
            let slices = self.job(n, device, seed).slices(self.slices);
            let run = Fio::start_jobs(fio, &topo.ns(host), &slices, true).finish(self.timeout);
            let t = run.totals();
            eprintln!(
                "MEASURE fio read-back through {} {what}: error {}, {} blocks checked in {:?}",
                n.name, t.error, t.reads, run.took
            );
            run.expect_clean(
                &format!("read-back through {} {what}", n.name),
                self.blocks(),
            );
        }
    }

    /// Takes fio's area of `image` into `model` (fio's data is its own; the model then
    /// compares the rest of the disk and the images agree on this part).
    pub fn take_into(&self, model: &mut Model, image: &[u8]) {
        let (lo, hi) = (self.offset as usize, (self.offset + self.size) as usize);
        model.write(self.offset / 512, &image[lo..hi]);
    }
}
