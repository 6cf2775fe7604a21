//! Placeholder until the host collector lands (branch host-metrics).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

#[derive(Debug, Default)]
pub struct WorkerThreads {
    tids: Mutex<Vec<(usize, i32)>>,
}

impl WorkerThreads {
    pub fn register(&self, worker: usize, tid: i32) {
        self.tids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((worker, tid));
    }
    pub fn unregister(&self, worker: usize) {
        self.tids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|(w, _)| *w != worker);
    }
}

#[derive(Debug)]
pub struct HostCollector;

impl HostCollector {
    pub fn new(_proc_root: impl Into<PathBuf>, _sys_root: impl Into<PathBuf>, _workers: Arc<WorkerThreads>) -> Self {
        HostCollector
    }
}

impl prometheus_client::collector::Collector for HostCollector {
    fn encode(&self, _encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        Ok(())
    }
}
