#!/usr/bin/python3
"""nvidia-smi of the embedded lab (shipped by the lab's nvidia-utils-BRANCH package).

Replays the REAL output formats captured in ../shared/corpus/ for the profile's GPU and the
installed driver branch:
  - the table: nvidia-smi_rtx5060ti_595.71.05_full_table.txt (column widths measured there;
    "No running processes found" is nvidia-smi's wording for an empty process list);
  - --query-gpu=... --format=csv[,noheader][,nounits]: nvidia-smi_query-gpu_csv_rtx5060ti.txt
    (header "name, memory.total [MiB]", values "16311 MiB"; nounits drops the unit from values only);
  - -q -x: nvidia-smi_-q_-x_gtx1070_530.xml (same elements, this GPU's values);
  - failures: nvidia-smi_failure_messages.txt (1) module not loaded, (2) closed module on
    Blackwell ("No devices were found"), (4) userspace newer than the loaded module.
Exit statuses: nvidia-smi(1) "RETURN VALUE" (2 invalid argument, 6 not found, 9 driver not
loaded); 18 for the version mismatch is what users report (not in the man page).
The lab-only parts: values come from the fw_cfg hardware JSON and /run/nvidia-lab (see common code).
"""
import sys

# @@LAB_COMMON@@

DRIVER_VERSION = "@@DRIVER_VERSION@@"
CUDA_VERSION = "@@CUDA_VERSION@@"

MSG_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                 "Make sure that the latest NVIDIA driver is installed and running.")
MSG_NO_DEVICES = "No devices were found"
MSG_MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: %s"

LINE = "+" + "-" * 89 + "+"
SPLIT = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"


def gpu_view(gpu, state):
    """The per-GPU values every output form uses (strings as nvidia-smi prints them)."""
    used = lab_used_mib(gpu)
    total = int(gpu["memory_total_mib"])
    return {
        "index": "0",
        "name": gpu["name"],
        "bus": "0000" + gpu["pci_address"],
        "persistence": gpu.get("persistence", "Off"),
        "disp": gpu.get("display_active", "Off"),
        "ecc": gpu.get("ecc", "N/A"),
        "fan": gpu.get("fan", "N/A"),
        "temp": "%dC" % int(gpu.get("temp_c", 30)),
        "perf": gpu.get("perf", "P8"),
        "pwr": "%dW" % int(gpu.get("power_draw_w", 0)),
        "cap": "%dW" % int(gpu.get("power_cap_w", 0)),
        "used": used,
        "total": total,
        "free": total - used - int(gpu.get("memory_reserved_mib", 0)),
        "util": "0%",
        "mode": gpu.get("compute_mode", "Default"),
        "mig": gpu.get("mig", "N/A"),
    }


def proc_rows(procs):
    """Process table rows (nvidia-smi shortens long names from the left with "...")."""
    rows = []
    for p in procs:
        name = p["name"]
        if len(name) > 37:
            name = "..." + name[-34:]
        rows.append("|  %3s   %3s  %3s  %14s  %5s   %-37s%9s |" % (
            p.get("gpu", "0"), p.get("gi", "N/A"), p.get("ci", "N/A"), p["pid"], p.get("type", "C"),
            name, "%dMiB" % int(p["used_mib"])))
    return rows


def render_table(now, smi_version, driver_version, cuda_version, gpus, procs):
    """The default nvidia-smi table. ``gpus``: list of :func:`gpu_view` dicts; ``procs``: ledger entries."""
    import time as t
    out = [t.strftime("%a %b %d %H:%M:%S %Y", t.localtime(now)) + "       ", LINE,
           "| NVIDIA-SMI %-23sDriver Version: %-15sCUDA Version: %-9s|" % (smi_version, driver_version, cuda_version),
           SPLIT,
           "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
           "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
           "|                                         |                        |               MIG M. |",
           "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|"]
    for g in gpus:
        out.append("| %3s  %-31s%-3s |   %-16s %3s |%21s |" % (g["index"], g["name"], g["persistence"], g["bus"], g["disp"], g["ecc"]))
        out.append("| %3s   %3s    %-2s%16s / %5s |%11s / %9s |%8s%13s |" % (
            g["fan"], g["temp"], g["perf"], g["pwr"], g["cap"], "%dMiB" % g["used"], "%dMiB" % g["total"], g["util"], g["mode"]))
        out.append("|%41s|%24s|%21s |" % ("", "", g["mig"]))
        out.append(SPLIT)
    out += ["", LINE,
            "| Processes:" + " " * 78 + "|",
            "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
            "|        ID   ID                                                               Usage      |",
            "|" + "=" * 89 + "|"]
    rows = proc_rows(procs)
    out += rows or ["|  %-87s|" % "No running processes found"]
    out.append(LINE)
    return "\n".join(out) + "\n"


# field -> (unit shown in the header, value function)
def _fields(g, gpu, driver_version):
    return {
        "index": ("", g["index"]), "name": ("", g["name"]), "gpu_name": ("", g["name"]),
        "uuid": ("", gpu.get("uuid", "")), "gpu_uuid": ("", gpu.get("uuid", "")),
        "driver_version": ("", driver_version), "count": ("", "1"),
        "pci.bus_id": ("", g["bus"]), "gpu_bus_id": ("", g["bus"]),
        "vbios_version": ("", gpu.get("vbios_version", "")),
        "compute_cap": ("", gpu.get("compute_cap", "")),
        "memory.total": ("MiB", str(g["total"])), "memory.used": ("MiB", str(g["used"])),
        "memory.free": ("MiB", str(g["free"])), "memory.reserved": ("MiB", str(gpu.get("memory_reserved_mib", 0))),
        "temperature.gpu": ("", str(int(gpu.get("temp_c", 0)))),
        "utilization.gpu": ("%", "0"), "utilization.memory": ("%", "0"),
        "fan.speed": ("%", g["fan"].rstrip("%")),
        "power.draw": ("W", "%.2f" % float(gpu.get("power_draw_w", 0))),
        "power.limit": ("W", "%.2f" % float(gpu.get("power_cap_w", 0))),
        "pstate": ("", g["perf"]),
        "persistence_mode": ("", "Enabled" if g["persistence"] == "On" else "Disabled"),
        "compute_mode": ("", g["mode"]),
    }


def render_query(fields, fmt, g, gpu, driver_version):
    """--query-gpu output; raises KeyError(field) for an unknown field."""
    table = _fields(g, gpu, driver_version)
    opts = set(fmt.split(","))
    cols = []
    for f in fields:
        f = f.strip()
        if f not in table:
            raise KeyError(f)
        cols.append((f, ) + table[f])
    lines = []
    if "noheader" not in opts:
        lines.append(", ".join(f + (" [%s]" % u if u else "") for f, u, _ in cols))
    vals = []
    for f, u, v in cols:
        if u and "nounits" not in opts:
            v = "%s %s" % (v, u)
        vals.append(v)
    lines.append(", ".join(vals))
    return "\n".join(lines) + "\n"


def render_compute_apps(fields, fmt, gpu, procs):
    opts = set(fmt.split(","))
    units = {"used_memory": "MiB", "used_gpu_memory": "MiB"}
    lines = []
    if "noheader" not in opts:
        lines.append(", ".join(f + (" [%s]" % units[f] if f in units else "") for f in fields))
    for p in procs:
        row = []
        for f in fields:
            if f == "pid":
                row.append(str(p["pid"]))
            elif f in ("process_name", "name"):
                row.append(p["name"])
            elif f in units:
                row.append(str(p["used_mib"]) + ("" if "nounits" in opts else " MiB"))
            elif f == "gpu_uuid":
                row.append(gpu.get("uuid", ""))
            elif f in ("gpu_bus_id",):
                row.append("0000" + gpu["pci_address"])
            else:
                raise KeyError(f)
        lines.append(", ".join(row))
    return "\n".join(lines) + ("\n" if lines else "")


XML_HEAD = """<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
	<timestamp>{timestamp}</timestamp>
	<driver_version>{driver_version}</driver_version>
	<cuda_version>{cuda_version}</cuda_version>
	<attached_gpus>{attached}</attached_gpus>
"""
# Element list and nesting: corpus nvidia-smi_-q_-x_gtx1070_530.xml (first <gpu>, with its
# "elided" comment kept: that capture is the only real -q -x we have).
XML_GPU = """	<gpu id="{bus}">
		<product_name>{name}</product_name>
		<product_brand>{brand}</product_brand>
		<product_architecture>{arch}</product_architecture>
		<display_mode>{display_mode}</display_mode>
		<display_active>{display_active}</display_active>
		<persistence_mode>{persistence_mode}</persistence_mode>
		<mig_mode>
			<current_mig>N/A</current_mig>
			<pending_mig>N/A</pending_mig>
		</mig_mode>
		<mig_devices>
			None
		</mig_devices>
		<accounting_mode>Disabled</accounting_mode>
		<accounting_mode_buffer_size>4000</accounting_mode_buffer_size>
		<driver_model>
			<current_dm>N/A</current_dm>
			<pending_dm>N/A</pending_dm>
		</driver_model>
		<serial>{serial}</serial>
		<uuid>{uuid}</uuid>
		<minor_number>{minor}</minor_number>
		<vbios_version>{vbios}</vbios_version>
		<multigpu_board>No</multigpu_board>
		<board_id>{board_id}</board_id>
		<board_part_number>N/A</board_part_number>
		<gpu_part_number>{gpu_part_number}</gpu_part_number>
		<gpu_fru_part_number>N/A</gpu_fru_part_number>
		<gpu_module_id>1</gpu_module_id>
		<inforom_version>
			<img_version>{inforom_img}</img_version>
			<oem_object>{inforom_oem}</oem_object>
			<ecc_object>N/A</ecc_object>
			<pwr_object>N/A</pwr_object>
		</inforom_version>
		<gpu_operation_mode>
			<current_gom>N/A</current_gom>
			<pending_gom>N/A</pending_gom>
		</gpu_operation_mode>
		<gsp_firmware_version>{gsp}</gsp_firmware_version>
		<gpu_virtualization_mode>
			<virtualization_mode>{virt}</virtualization_mode>
			<host_vgpu_mode>N/A</host_vgpu_mode>
		</gpu_virtualization_mode>
		<gpu_reset_status>
			<reset_required>No</reset_required>
			<drain_and_reset_recommended>N/A</drain_and_reset_recommended>
		</gpu_reset_status>
		<ibmnpu>
			<relaxed_ordering_mode>N/A</relaxed_ordering_mode>
		</ibmnpu>
		<pci>
			<pci_bus>{pci_bus}</pci_bus>
			<pci_device>{pci_device}</pci_device>
			<pci_domain>{pci_domain}</pci_domain>
			<pci_device_id>{pci_device_id}</pci_device_id>
			<pci_bus_id>{bus}</pci_bus_id>
			<pci_sub_system_id>{pci_sub_system_id}</pci_sub_system_id>
			<pci_gpu_link_info>
				<pcie_gen>
					<max_link_gen>{link_gen}</max_link_gen>
					<current_link_gen>{link_gen}</current_link_gen>
					<device_current_link_gen>{link_gen}</device_current_link_gen>
					<max_device_link_gen>{link_gen}</max_device_link_gen>
					<max_host_link_gen>{link_gen}</max_host_link_gen>
				</pcie_gen>
				<link_widths>
					<max_link_width>{link_width}</max_link_width>
					<current_link_width>{link_width}</current_link_width>
				</link_widths>
			</pci_gpu_link_info>
		</pci>
		<fan_speed>{fan}</fan_speed>
		<performance_state>{perf}</performance_state>
		<fb_memory_usage>
			<total>{total} MiB</total>
			<reserved>{reserved} MiB</reserved>
			<used>{used} MiB</used>
			<free>{free} MiB</free>
		</fb_memory_usage>
		<bar1_memory_usage>
			<total>{bar1_total} MiB</total>
			<used>{bar1_used} MiB</used>
			<free>{bar1_free} MiB</free>
		</bar1_memory_usage>
		<compute_mode>{compute_mode}</compute_mode>
		<utilization>
			<gpu_util>{gpu_util}</gpu_util>
			<memory_util>{memory_util}</memory_util>
			<encoder_util>{encoder_util}</encoder_util>
			<decoder_util>{decoder_util}</decoder_util>
		</utilization>
		<!-- (ecc_errors, retired_pages, temperature, clocks, supported_clocks elided here for brevity) -->
		<power_readings>
			<power_state>{perf}</power_state>
			<power_management>Supported</power_management>
			<power_draw>{power_draw}</power_draw>
			<power_limit>{power_limit}</power_limit>
			<default_power_limit>{power_limit}</default_power_limit>
			<enforced_power_limit>{power_limit}</enforced_power_limit>
			<min_power_limit>{min_power_limit}</min_power_limit>
			<max_power_limit>{max_power_limit}</max_power_limit>
		</power_readings>
		<processes>
{processes}		</processes>
		<accounted_processes>
		</accounted_processes>
	</gpu>
"""
XML_PROC = """			<process_info>
				<gpu_instance_id>N/A</gpu_instance_id>
				<compute_instance_id>N/A</compute_instance_id>
				<pid>{pid}</pid>
				<type>{type}</type>
				<process_name>{name}</process_name>
				<used_memory>{used_mib} MiB</used_memory>
			</process_info>
"""


def render_xml(head, gpus):
    """``-q -x``: ``head`` (timestamp, driver_version, cuda_version, attached) and per-GPU value dicts."""
    from xml.sax.saxutils import escape
    out = XML_HEAD.format(**head)
    for g in gpus:
        g = dict(g)
        g["processes"] = "".join(XML_PROC.format(pid=p["pid"], type=p.get("type", "C"), name=escape(p.get("xml_name", p["name"])),
                                                 used_mib=p["used_mib"]) for p in g.get("procs", []))
        out += XML_GPU.format(**g)
    return out + "</nvidia_smi_log>\n"


def xml_values(gpu, g, procs):
    bus, dev = gpu["pci_address"].split(":")[1], gpu["pci_address"].split(":")[2].split(".")[0]
    return {
        "bus": g["bus"], "name": gpu["name"], "brand": gpu.get("brand", "GeForce"), "arch": gpu.get("architecture", "N/A"),
        "display_mode": "Disabled", "display_active": "Disabled",
        "persistence_mode": "Enabled" if g["persistence"] == "On" else "Disabled",
        "serial": gpu.get("serial", "N/A"), "uuid": gpu.get("uuid", ""), "minor": gpu.get("minor_number", 0),
        "vbios": gpu.get("vbios_version", ""), "board_id": "0x%x" % int(bus, 16) + "00",
        "gpu_part_number": gpu.get("gpu_part_number", "N/A"), "inforom_img": gpu.get("inforom_img", "N/A"),
        "inforom_oem": gpu.get("inforom_oem", "N/A"), "gsp": DRIVER_VERSION if gpu.get("requires_open_module") else "N/A",
        "virt": "Pass-Through", "pci_bus": bus, "pci_device": dev, "pci_domain": "0000",
        "pci_device_id": (gpu["device_id"] + gpu["vendor_id"]).upper(),
        "pci_sub_system_id": (gpu["subsystem_device_id"] + gpu["subsystem_vendor_id"]).upper(),
        "link_gen": gpu.get("pcie_gen", 5), "link_width": gpu.get("pcie_width", "8x"),
        "fan": g["fan"].replace("%", " %"), "perf": g["perf"], "total": g["total"],
        "reserved": gpu.get("memory_reserved_mib", 0), "used": g["used"], "free": g["free"],
        "bar1_total": 256, "bar1_used": 2, "bar1_free": 254, "compute_mode": g["mode"],
        "gpu_util": "0 %", "memory_util": "0 %", "encoder_util": "0 %", "decoder_util": "0 %",
        "power_draw": "%.2f W" % float(gpu.get("power_draw_w", 0)),
        "power_limit": "%.2f W" % float(gpu.get("power_cap_w", 0)),
        "min_power_limit": "%.2f W" % (float(gpu.get("power_cap_w", 0)) / 2),
        "max_power_limit": "%.2f W" % float(gpu.get("power_cap_w", 0)),
        "procs": procs,
    }


def main(argv):
    import time as t
    hw = lab_hw()
    state = lab_driver_state()
    if state is None or state.get("status") in ("rejected", "no_device", "not_loaded"):
        print(MSG_NO_DRIVER)
        return 9
    if state.get("version") != DRIVER_VERSION:
        print(MSG_MISMATCH % ".".join(DRIVER_VERSION.split(".")[:2]))
        return 18
    if state.get("status") != "ok" or not hw["gpus"]:
        print(MSG_NO_DEVICES)
        return 6
    gpu = hw["gpus"][0]
    procs = lab_gpu_procs()
    g = gpu_view(gpu, state)
    opts = {}
    flags = set()
    it = iter(argv)
    for a in it:
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            opts[k] = v
        elif a in ("--query-gpu", "--format", "--query-compute-apps", "-i", "--id"):
            opts[a] = next(it, "")
        elif a in ("-q", "--query", "-x", "--xml-format", "-L", "--list-gpus", "-h", "--help"):
            flags.add(a)
        elif a.startswith("-") and len(a) > 2 and not a.startswith("--") and set(a[1:]) <= set("qxL"):
            flags.update("-" + c for c in a[1:])
        else:
            print('Invalid combination of input arguments. Please run \'nvidia-smi -h\' for help.\n')
            return 2
    fmt = opts.get("--format", "")
    try:
        if "--query-gpu" in opts:
            if not fmt.startswith("csv"):
                print("Error: --format is a required argument.\n")  # nvidia-smi wording for a missing --format
                return 2
            sys.stdout.write(render_query(opts["--query-gpu"].split(","), fmt, g, gpu, DRIVER_VERSION))
            return 0
        if "--query-compute-apps" in opts:
            sys.stdout.write(render_compute_apps([f.strip() for f in opts["--query-compute-apps"].split(",")], fmt, gpu, procs))
            return 0
    except KeyError as e:
        print('Field "%s" is not a valid field to query.\n' % e.args[0])
        return 2
    if flags & {"-L", "--list-gpus"}:
        print("GPU 0: %s (UUID: %s)" % (gpu["name"], gpu.get("uuid", "")))
        return 0
    if flags & {"-x", "--xml-format"}:
        head = {"timestamp": t.strftime("%a %b %d %H:%M:%S %Y", t.localtime(lab_now())), "driver_version": DRIVER_VERSION,
                "cuda_version": CUDA_VERSION, "attached": 1}
        sys.stdout.write(render_xml(head, [xml_values(gpu, g, procs)]))
        return 0
    if flags & {"-q", "--query"}:
        print("\n==============NVSMI LOG==============\n")
        print("Timestamp                                 : %s" % t.strftime("%a %b %d %H:%M:%S %Y", t.localtime(lab_now())))
        print("Driver Version                            : %s" % DRIVER_VERSION)
        print("CUDA Version                              : %s\n" % CUDA_VERSION)
        print("Attached GPUs                             : 1")
        print("GPU %s" % g["bus"])
        print("    Product Name                          : %s" % gpu["name"])
        print("    Product Architecture                  : %s" % gpu.get("architecture", ""))
        print("    GPU UUID                              : %s" % gpu.get("uuid", ""))
        print("    FB Memory Usage")
        print("        Total                             : %d MiB" % g["total"])
        print("        Used                              : %d MiB" % g["used"])
        print("        Free                              : %d MiB" % g["free"])
        return 0
    sys.stdout.write(render_table(lab_now(), DRIVER_VERSION, DRIVER_VERSION, CUDA_VERSION, [g], procs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
