//! The state file `xlb run` writes for the inspection commands after every change
//! ([`pins::state_file`]): the reconciler's [`Snapshot`] as compact JSON.
//!
//! The reconciler rebuilds only the snapshot parts of the Service ports an apply touched and
//! shares the others (the same `Arc`). [`StateWriter`] keeps each part's JSON, keyed by that
//! `Arc`, so a change serialises only its own ports; the rest of the file is a copy of bytes
//! already made (at 10,000 Service ports × 10 backends, serialising everything cost ~80 ms per
//! change, more than the change itself).
use std::{collections::HashMap, fs, io::BufWriter, path::Path, sync::Arc};

use anyhow::Context as _;

use crate::datapath::{
    pins,
    reconcile::{ServiceSnapshot, Snapshot},
};

/// Writes the state file; remembers the JSON of each snapshot part it wrote.
#[derive(Default)]
pub struct StateWriter {
    /// By the part's address (the `Arc` is kept, so the address is not reused meanwhile).
    parts: HashMap<usize, (Arc<ServiceSnapshot>, Vec<u8>)>,
}

impl StateWriter {
    /// Writes `snapshot` to `pin_dir`'s state file (a temporary file renamed over it).
    pub fn write(&mut self, pin_dir: &Path, snapshot: &Snapshot) -> anyhow::Result<()> {
        let path = pins::state_file(pin_dir);
        let dir = path.parent().context("state file has no parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 18, file);
        self.encode(snapshot, &mut out)?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// `snapshot` as `serde_json::to_vec` writes it, from the remembered parts where it can.
    /// Forgets the parts `snapshot` no longer has.
    fn encode(&mut self, snapshot: &Snapshot, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let mut next = HashMap::with_capacity(snapshot.services.len());
        out.write_all(b"{\"services\":[")?;
        for (i, part) in snapshot.services.iter().enumerate() {
            let key = Arc::as_ptr(part) as usize;
            let entry = match self.parts.remove(&key) {
                Some(e) => e,
                None => (part.clone(), serde_json::to_vec(&**part)?),
            };
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(&entry.1)?;
            next.insert(key, entry);
        }
        out.write_all(b"]}")?;
        self.parts = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::reconcile::{BackendSnapshot, FrontendSnapshot};

    fn part(name: &str, slots: u32) -> Arc<ServiceSnapshot> {
        Arc::new(ServiceSnapshot {
            name: name.into(),
            protocol: "TCP".into(),
            service_id: 1,
            table_size: 127,
            frontends: vec![FrontendSnapshot {
                addr: Some("198.19.0.1".parse().unwrap()),
                port: 80,
                kind: "LoadBalancer".into(),
                frontend_id: 2,
            }],
            backends: vec![BackendSnapshot {
                addr: "198.18.1.1".parse().unwrap(),
                port: 8080,
                node: Some("node-a".into()),
                local: true,
                weight: 1,
                state: "ready".into(),
                backend_id: 3,
                slots,
            }],
        })
    }

    /// The file is what serialising the whole snapshot gives, also after parts change, come
    /// and go; parts no longer in the snapshot are forgotten.
    #[test]
    fn the_file_is_the_whole_snapshot_serialised() {
        let mut w = StateWriter::default();
        let (a, b, c) = (part("a", 127), part("b", 127), part("c", 127));
        let steps = [
            Snapshot::default(),
            Snapshot {
                services: vec![a.clone(), b.clone()],
            },
            Snapshot {
                services: vec![a.clone(), part("b", 100), c.clone()],
            },
            Snapshot {
                services: vec![c.clone()],
            },
        ];
        for s in &steps {
            let mut got = Vec::new();
            w.encode(s, &mut got).unwrap();
            assert_eq!(got, serde_json::to_vec(s).unwrap());
            assert_eq!(serde_json::from_slice::<Snapshot>(&got).unwrap(), *s);
            assert_eq!(w.parts.len(), s.services.len());
        }
    }
}
