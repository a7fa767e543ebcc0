//! ublk-mem's commands about devices it does not serve: `features`, `list`, `del` (and the
//! store a recoverable device leaves behind).

use crate::contract;
use crate::ctrl::{self, Control};
use crate::sys;

/// `ublk-mem features`: the driver's feature bits, by name.
pub fn features(json: bool) -> Result<(), String> {
    let ctl = Control::open(ctrl::DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
    let f = contract::Features {
        bits: ctl.features,
        names: sys::feature_names(ctl.features),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&f).expect("plain data serialises")
        );
    } else {
        println!("{:#x}: {}", f.bits, f.names.join(" "));
    }
    Ok(())
}

/// `ublk-mem list`: one line (or JSON object) per device.
pub fn list(json: bool) -> Result<(), String> {
    let mut ctl = Control::open(ctrl::DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
    for id in ctrl::list_ids() {
        let info = match ctl.get_dev_info(id) {
            Ok(i) => i,
            Err(ctrl::Error::NoDevice { .. }) => continue, // deleted meanwhile
            Err(e) => return Err(e.to_string()),
        };
        let size = ctl
            .get_params(id)
            .map(|p| p.basic.dev_sectors * 512)
            .unwrap_or(0);
        let state = crate::recovery::state_name(info.state);
        if json {
            let d = contract::Device {
                dev_id: id,
                state: state.to_string(),
                queues: info.nr_hw_queues,
                depth: info.queue_depth,
                size,
                pid: info.ublksrv_pid,
                flags: sys::feature_names(info.flags)
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            };
            println!(
                "{}",
                serde_json::to_string(&d).expect("plain data serialises")
            );
        } else {
            println!(
                "ublk{id}: {state}, {} queue(s) x depth {}, {} MiB, server pid {}, flags {}",
                info.nr_hw_queues,
                info.queue_depth,
                size >> 20,
                info.ublksrv_pid,
                sys::feature_names(info.flags).join(",")
            );
        }
    }
    Ok(())
}

/// `ublk-mem del`: STOP_DEV then DEL_DEV (the owning server, if alive, sees aborts and exits).
pub fn delete(ids: &[u32]) -> Result<(), String> {
    let mut ctl = Control::open(ctrl::DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
    for &id in ids {
        ctl.get_dev_info(id).map_err(|e| e.to_string())?;
        match ctl.stop_dev(id) {
            Ok(()) | Err(ctrl::Error::NoDevice { .. }) => {}
            Err(e) => return Err(format!("ublk{id}: {e}")),
        }
        ctl.del_dev(id).map_err(|e| format!("ublk{id}: {e}"))?;
        // A recoverable device's store (nothing for a plain one).
        let _ = std::fs::remove_file(crate::recovery::store_path(id));
        println!("deleted ublk{id}");
    }
    Ok(())
}
