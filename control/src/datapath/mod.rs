//! The kernel side as user space sees it: the embedded programs and how they are loaded and
//! attached ([`loader`]; the TC program by TCX or cls_bpf, [`tc_attach`]), where they are pinned ([`pins`]), typed handles on every
//! map ([`maps`], [`maglev_map`]), the [`reconcile::Reconciler`] that writes a plan into them,
//! and the one bounded walk of the connection table ([`conntrack`]); [`upgrade`] takes over the
//! datapath of an xlb with an older map layout; [`egress`] chooses per interface how built
//! frames leave, and [`pods`] which interfaces lead into pods; [`capacity`] is how many entries
//! the maps user space writes hold; [`hops`] prepares the outer headers of the remote path from
//! the neighbour table.
pub mod capacity;
pub mod conntrack;
pub mod egress;
pub mod hops;
pub mod loader;
pub mod maglev_map;
pub mod maps;
pub mod pins;
pub mod pods;
pub mod reconcile;
pub mod tc_attach;
pub mod uninstall;
pub mod upgrade;
