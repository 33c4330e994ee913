//! The command line: its arguments ([`args`]), the inspection commands (`services`, `stats`,
//! `maglev show` in [`inspect`], `conntrack` in [`conntrack`], `top`), how they print
//! ([`output`]), and shell completions and man pages ([`docs`]).
pub mod args;
pub mod attached;
pub mod conntrack;
pub mod docs;
pub mod inspect;
pub mod output;
pub mod top;
