//! Fuzzes the SCSI CDB decoder: any bytes must decode to a command or a sense triple, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_scsi::cdb::decode(data);
});
