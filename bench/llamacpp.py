"""Builds llama.cpp tools (llama-bench, llama-server) from the llama-cpp-python sdist on PyPI (pinned), once,
into target/llama.cpp; the benchmarks of bench/ share it. An environment variable LLAMA_BENCH /
LLAMA_SERVER pointing at a binary skips the build."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "target", "llama.cpp")
SDIST = "llama-cpp-python==0.3.36"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def tool(name):
    """The path of llama.cpp's `name` (llama-bench, llama-server), built on first use (~10 min on 2 vCPUs)."""
    env_var = name.upper().replace("-", "_")
    if os.environ.get(env_var):
        return os.environ[env_var]
    exe = os.path.join(CACHE, "src", "build", "bin", name)
    if os.path.exists(exe):
        return exe
    os.makedirs(CACHE, exist_ok=True)
    venv = os.path.join(CACHE, "venv")
    if not os.path.exists(venv):
        sh([sys.executable, "-m", "venv", venv])
        sh([f"{venv}/bin/pip", "install", "-q", "cmake", "ninja"])
    src = os.path.join(CACHE, "src")
    if not os.path.exists(src):
        sh([f"{venv}/bin/pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python", SDIST, "-d", CACHE])
        tar = next(f for f in os.listdir(CACHE) if f.endswith(".tar.gz"))
        with tarfile.open(os.path.join(CACHE, tar)) as t:
            t.extractall(CACHE, filter="data")
        os.symlink(os.path.join(CACHE, tar[: -len(".tar.gz")], "vendor", "llama.cpp"), src)
    env = dict(os.environ, PATH=f"{venv}/bin:" + os.environ["PATH"])
    print(f"building {name} (about 10 minutes on 2 vCPUs) ...", file=sys.stderr)
    sh(["cmake", "-B", "build", "-G", "Ninja", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"],
       cwd=src, env=env)
    sh(["cmake", "--build", "build", "--target", name, "-j2"], cwd=src, env=env)
    return exe


if __name__ == "__main__":
    for n in sys.argv[1:]:
        print(tool(n))
