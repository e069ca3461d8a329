//! An in-memory [`Maps`]: the same contract as the kernel maps, for testing the
//! control logic without BPF. It also records how many writes each map took, so
//! tests can assert that only differences are written.

use std::collections::BTreeMap;

use vip_common::{
    BackendStats, BackendValue, Counter, EncapValue, Globals, MAGLEV_ENTRIES, MAX_BACKENDS,
    REASON_COUNT, ServiceKey, ServiceValue,
};

use super::{DataplaneError, Maps, Result};

#[derive(Debug, Clone)]
pub struct MemMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: Vec<BackendValue>,
    pub encap: Vec<EncapValue>,
    pub maglev: Vec<u32>,
    pub ports: BTreeMap<u32, u64>,
    pub globals: Option<Globals>,
    pub writes: Writes,
    /// Every backend write in order: what a packet could have read between
    /// two of them.
    pub backend_log: Vec<(u32, BackendValue)>,
    /// Tests set this to make every Maglev write fail, as a full or broken
    /// kernel map would.
    pub fail_maglev: bool,
}

/// Write counts per map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub services: usize,
    pub backends: usize,
    pub maglev: usize,
    pub ports: usize,
}

impl Default for MemMaps {
    fn default() -> Self {
        MemMaps {
            services: BTreeMap::new(),
            backends: vec![BackendValue::EMPTY; MAX_BACKENDS as usize],
            encap: vec![EncapValue::EMPTY; MAX_BACKENDS as usize],
            // Kernel arrays start zeroed; so does this one.
            maglev: vec![0; MAGLEV_ENTRIES as usize],
            ports: BTreeMap::new(),
            globals: None,
            writes: Writes::default(),
            backend_log: Vec::new(),
            fail_maglev: false,
        }
    }
}

impl Maps for MemMaps {
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.writes.services += 1;
        self.services.insert(*key, *value);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.writes.services += 1;
        self.services.remove(key);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        let slot = self
            .backends
            .get_mut(id as usize)
            .ok_or(DataplaneError::Full {
                what: "backends",
                max: MAX_BACKENDS,
            })?;
        self.writes.backends += 1;
        *slot = *value;
        self.backend_log.push((id, *value));
        Ok(())
    }
    fn set_encap(&mut self, id: u32, value: &EncapValue) -> Result<()> {
        let slot = self
            .encap
            .get_mut(id as usize)
            .ok_or(DataplaneError::Full {
                what: "backends",
                max: MAX_BACKENDS,
            })?;
        *slot = *value;
        Ok(())
    }
    fn read_encap(&self, id: u32) -> Result<EncapValue> {
        Ok(self
            .encap
            .get(id as usize)
            .copied()
            .unwrap_or(EncapValue::EMPTY))
    }
    fn set_maglev(&mut self, index: u32, backend_id: u32) -> Result<()> {
        if self.fail_maglev {
            return Err(DataplaneError::Full {
                what: "Maglev entries (injected failure)",
                max: 0,
            });
        }
        let slot = self
            .maglev
            .get_mut(index as usize)
            .ok_or(DataplaneError::Full {
                what: "Maglev entries",
                max: MAGLEV_ENTRIES,
            })?;
        self.writes.maglev += 1;
        *slot = backend_id;
        Ok(())
    }
    fn set_globals(&mut self, g: &Globals) -> Result<()> {
        self.globals = Some(*g);
        Ok(())
    }
    fn set_port_word(&mut self, word: u32, bits: u64) -> Result<()> {
        self.writes.ports += 1;
        self.ports.insert(word, bits);
        Ok(())
    }
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        Ok(self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != BackendValue::EMPTY)
            .map(|(i, b)| (i as u32, *b))
            .collect())
    }
    fn read_maglev(&self, start: u32, len: u32) -> Result<Vec<u32>> {
        Ok(self.maglev[start as usize..(start + len) as usize].to_vec())
    }
    fn read_port_words(&self) -> Result<Vec<(u32, u64)>> {
        Ok(self
            .ports
            .iter()
            .filter(|(_, b)| **b != 0)
            .map(|(w, b)| (*w, *b))
            .collect())
    }
    fn reason_counters(&self) -> Result<Vec<Counter>> {
        Ok(vec![Counter::default(); REASON_COUNT as usize])
    }
    fn backend_counters(&self, _id: u32) -> Result<BackendStats> {
        Ok(BackendStats::default())
    }
}
