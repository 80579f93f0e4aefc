#!/usr/bin/python3
"""CUDA toolkit programs of the embedded lab (shipped by the lab's cuda-toolkit-12-8 package).

  - nvcc --version: replays ../shared/corpus/nvcc_--version_12.8_and_13.0.txt (a) verbatim
    (CUDA 12.8 update 1, V12.8.93). With input files it compiles nothing (the lab has no compiler
    back end) and says so; without any it prints nvcc's real "No input files specified" line.
  - extras/demo_suite/deviceQuery and vectorAdd: NO real capture of these exists in the corpus,
    so their output is SYNTHESISED after the CUDA samples' well-known layout and kept modest.
    They report a device / a kernel run only when the lab driver is loaded and working
    (/run/nvidia-lab/state.json for this boot), else the CUDA error the samples print.
"""
import os
import sys

# @@LAB_COMMON@@

TOOL = "@@TOOL@@"

NVCC_VERSION = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Fri_Feb_21_20:23:50_PST_2025
Cuda compilation tools, release 12.8, V12.8.93
Build cuda_12.8.r12.8/compiler.35583870_0
"""
RUNTIME = "12.8"


def nvcc(argv):
    if any(a in ("--version", "-V") for a in argv):
        sys.stdout.write(NVCC_VERSION)
        return 0
    if not [a for a in argv if not a.startswith("-")]:
        print("nvcc fatal   : No input files specified; use option --help for more information")
        return 1
    print("nvcc fatal   : the lab's nvcc replays --version only; it cannot compile", file=sys.stderr)
    return 1


def _cuda_error(prog):
    # SYNTHESISED: the samples' checkCudaErrors wording for cudaErrorNoDevice (100)
    print("cudaGetDeviceCount returned 100\n-> no CUDA-capable device is detected")
    print("Result = FAIL")
    return 1


def device_query(argv):
    prog = os.path.basename(sys.argv[0]) or "deviceQuery"
    print("%s Starting...\n" % sys.argv[0])
    print(" CUDA Device Query (Runtime API) version (CUDART static linking)\n")
    st = lab_driver_ok()
    if not st:
        return _cuda_error(prog)
    gpu = lab_hw()["gpus"][0]
    drv_cuda = st.get("cuda_version") or RUNTIME
    total = int(gpu["memory_total_mib"])
    major, minor = gpu["compute_cap"].split(".")
    print("Detected 1 CUDA Capable device(s)\n")
    print('Device 0: "%s"' % gpu["name"])
    print("  CUDA Driver Version / Runtime Version          %s / %s" % (drv_cuda, RUNTIME))
    print("  CUDA Capability Major/Minor version number:    %s.%s" % (major, minor))
    print("  Total amount of global memory:                 %d MBytes (%d bytes)" % (total, total * 1048576))
    print("  PCI Domain ID / Bus ID / location ID:           0 / %d / 0" % int(gpu["pci_address"].split(":")[1], 16))
    print("")
    print("deviceQuery, CUDA Driver = CUDART, CUDA Driver Version = %s, CUDA Runtime Version = %s, NumDevs = 1, Device0 = %s"
          % (drv_cuda, RUNTIME, gpu["name"]))
    print("Result = PASS")
    return 0


def vector_add(argv):
    print("[Vector addition of 50000 elements]")
    if not lab_driver_ok():
        print("Failed to allocate device vector A (error code no CUDA-capable device is detected)!")
        return 1
    print("Copy input data from the host memory to the CUDA device")
    print("CUDA kernel launch with 196 blocks of 256 threads")
    print("Copy output data from the CUDA device to the host memory")
    print("Test PASSED")
    print("Done")
    return 0


if __name__ == "__main__":
    sys.exit({"nvcc": nvcc, "deviceQuery": device_query, "vectorAdd": vector_add}[TOOL](sys.argv[1:]))
