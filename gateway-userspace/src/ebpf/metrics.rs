//! `gateway_xdp_*` and `gateway_steering_*`: read from the kernel's maps at scrape time (per-CPU
//! counters summed here), never on a request path.

use std::{fmt, sync::Arc};

use gateway_common::xdp::{NEW_SOURCE_INSERTED, NEW_SOURCE_OVER_CAP, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{AttachMode, Steering, XdpService};

pub(super) type Labels = Vec<(&'static str, String)>;

/// Registered once at startup; families are empty while the guard or steering is off.
pub struct EbpfCollector {
    pub xdp: Option<Arc<XdpService>>,
    pub steering: Option<Arc<Steering>>,
}

impl fmt::Debug for EbpfCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EbpfCollector")
    }
}

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if let Some(xdp) = &self.xdp {
            let snap = xdp.snapshot();
            let mut packets = Vec::new();
            let mut new_sources = Vec::new();
            let mut modes = Vec::new();
            for (iface, mode, counters) in &snap.interfaces {
                for verdict in Verdict::ALL {
                    let labels = vec![("iface", iface.clone()), ("verdict", verdict.label().to_owned())];
                    packets.push((labels, ConstCounter::new(counters[verdict as usize])));
                }
                for (result, index) in [("inserted", NEW_SOURCE_INSERTED), ("over_cap", NEW_SOURCE_OVER_CAP)] {
                    let labels = vec![("iface", iface.clone()), ("result", result.to_owned())];
                    new_sources.push((labels, ConstCounter::new(counters[index as usize])));
                }
                for m in AttachMode::ALL {
                    let labels = vec![("iface", iface.clone()), ("mode", m.label().to_owned())];
                    modes.push((labels, ConstGauge::new(i64::from(m == *mode))));
                }
            }
            family(
                &mut encoder,
                "gateway_xdp_packets",
                "Frames judged by the XDP/TC guard, by interface and verdict",
                &packets,
            )?;
            family(
                &mut encoder,
                "gateway_xdp_new_sources",
                "Sources seen for the first time: given a bucket (inserted) or over this CPU's per-second budget (over_cap)",
                &new_sources,
            )?;
            family(
                &mut encoder,
                "gateway_xdp_mode",
                "1 for the mode the guard is attached in on each interface",
                &modes,
            )?;
            let tracked = vec![(Labels::new(), ConstGauge::new(snap.tracked_sources as i64))];
            family(
                &mut encoder,
                "gateway_xdp_tracked_sources",
                "Sources with a bucket in the guard's source table",
                &tracked,
            )?;
            let blocks: Vec<_> = [("admin", snap.blocks[0]), ("feedback", snap.blocks[1])]
                .into_iter()
                .map(|(origin, n)| (vec![("origin", origin.to_owned())], ConstCounter::new(n)))
                .collect();
            family(
                &mut encoder,
                "gateway_xdp_blocks",
                "Prefixes added to the deny list at run time, by origin",
                &blocks,
            )?;
            let entries: Vec<_> = [("config", 0), ("admin", 1), ("feedback", 2)]
                .into_iter()
                .map(|(origin, i)| (vec![("origin", origin.to_owned())], ConstGauge::new(snap.deny_entries[i] as i64)))
                .collect();
            family(&mut encoder, "gateway_xdp_deny_entries", "Deny-list entries in force, by origin", &entries)?;
            let reports: Vec<_> = xdp
                .offenders()
                .reported()
                .map(|(reason, n)| (vec![("reason", reason.label().to_owned())], ConstCounter::new(n)))
                .collect();
            family(
                &mut encoder,
                "gateway_xdp_feedback_reports",
                "Events counted against sources by [xdp.feedback] (L7 refusals, connections closed without a request), by reason",
                &reports,
            )?;
        }
        if let Some(steering) = &self.steering {
            let (per_worker, fallback) = steering.counts();
            let steered: Vec<_> = per_worker
                .iter()
                .enumerate()
                .map(|(w, n)| (vec![("worker", w.to_string())], ConstCounter::new(*n)))
                .collect();
            family(&mut encoder, "gateway_steering_connections", "New connections steered to each worker", &steered)?;
            let fallback = vec![(Labels::new(), ConstCounter::new(fallback))];
            family(
                &mut encoder,
                "gateway_steering_fallbacks",
                "New connections left to the kernel's hash because the chosen worker's socket was not in the array",
                &fallback,
            )?;
            let by_cpu: Vec<_> = steering
                .counts_by_cpu()
                .iter()
                .enumerate()
                .flat_map(|(w, row)| {
                    row.iter().enumerate().filter(|(_, n)| **n > 0).map(move |(cpu, n)| {
                        (vec![("worker", w.to_string()), ("cpu", cpu.to_string())], ConstCounter::new(*n))
                    })
                })
                .collect();
            family(
                &mut encoder,
                "gateway_steering_connections_by_cpu",
                "New connections steered to each worker, by the CPU that processed their SYN",
                &by_cpu,
            )?;
            if let Some(nic) = steering.nic() {
                super::cpusteer::encode(&mut encoder, nic)?;
            }
        }
        Ok(())
    }
}

pub(super) fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, M)],
) -> fmt::Result {
    let Some((_, first)) = samples.first() else { return Ok(()) };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}
