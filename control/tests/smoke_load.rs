use xlb::datapath::loader::{LoadOptions, load};

#[test]
fn programs_load_and_verify() {
    let loaded = load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 1024,
    })
    .expect("load");
    drop(loaded);
}
