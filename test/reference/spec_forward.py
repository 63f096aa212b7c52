"""An independent float64 implementation of SPEC.md's forward pass in numpy,
written from the spec's equations, to check the library on configurations
the golden fixtures do not cover: every layer kind (r, N, 1, rN, r1),
add_bias_linear, no swiglu, the SiLU activation option, f16 storage.

Reads model.safetensors and config.json itself (no library code involved).
"""
import json
import math
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = raw[base + begin:base + end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[info["dtype"]])
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def parse_layers(cfg):
    codes = cfg.get("mamba_moe_layers") or ["r"] * cfg["num_layers"]
    layers = []
    for code in codes:
        has_mamba = code.startswith("r")
        rest = code[1:] if has_mamba else code
        layers.append((has_mamba, int(rest) if rest else 0))
    return layers


def rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt(np.mean(x * x) + eps) * w


def layernorm(x, w, b, eps=1e-5):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / np.sqrt(var + eps) * w + b


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


class Reference:
    def __init__(self, model_dir, activation="gelu"):
        with open(f"{model_dir}/config.json") as f:
            self.cfg = json.load(f)
        self.w = read_safetensors(f"{model_dir}/model.safetensors")
        self.layers = parse_layers(self.cfg)
        self.act = gelu if activation == "gelu" else silu
        d = self.cfg["hidden_size"]
        self.d_inner = self.cfg["expansion_factor"] * d
        self.N = self.cfg["state_size"]
        self.K = self.cfg["conv_dimension"]
        self.R = math.ceil(d / 16)
        self.bias = self.cfg.get("add_bias_linear", False)
        self.swiglu = self.cfg.get("swiglu", False)

    def linear(self, name, x):
        y = self.w[name + ".weight"] @ x
        if (name + ".bias") in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def mlp(self, prefix, x):
        a = self.linear(prefix + ".linear_fc1", x)
        if self.swiglu:
            F = a.shape[0] // 2
            m = self.act(a[:F]) * a[F:]
        else:
            m = self.act(a)
        return self.linear(prefix + ".linear_fc2", m)

    def moe(self, prefix, n_experts, x):
        if n_experts == 1:
            return self.mlp(prefix, x)
        logits = self.w[prefix + ".router.weight"] @ x + self.w[prefix + ".router.bias"]
        p = 1.0 / (1.0 + np.exp(-logits))
        e = int(np.argmax(p))
        return p[e] * self.mlp(f"{prefix}.local_experts.{e}", x)

    def mamba(self, prefix, x, state):
        di = self.d_inner
        xz = self.linear(prefix + ".in_proj", x)
        xs, z = xz[:di], xz[di:]
        conv = state["conv"]  # [di, K-1], oldest first
        window = np.concatenate([conv, xs[:, None]], axis=1)
        cw = self.w[prefix + ".conv1d.weight"][:, 0, :]
        u = silu(self.w[prefix + ".conv1d.bias"] + (cw * window).sum(axis=1))
        state["conv"] = window[:, 1:]
        dbc = self.w[prefix + ".x_proj.weight"] @ u
        dt, B, C = dbc[:self.R], dbc[self.R:self.R + self.N], dbc[self.R + self.N:]
        delta = softplus(self.w[prefix + ".dt_proj.weight"] @ dt + self.w[prefix + ".dt_proj.bias"])
        A = -np.exp(self.w[prefix + ".A_log"])
        s = np.exp(delta[:, None] * A) * state["ssm"] + (delta * u)[:, None] * B[None, :]
        state["ssm"] = s
        y = s @ C + self.w[prefix + ".D"] * u
        return self.linear(prefix + ".out_proj", y * silu(z))

    def new_state(self):
        return [{"conv": np.zeros((self.d_inner, self.K - 1)), "ssm": np.zeros((self.d_inner, self.N))}
                for has_mamba, _ in self.layers if has_mamba]

    def step(self, states, token):
        emb = self.w.get("embedding.word_embeddings.weight", self.w.get("embedding.weight"))
        x = emb[token].copy()
        residual = None
        mi = 0
        for i, (has_mamba, n_experts) in enumerate(self.layers):
            residual = x if residual is None else x + residual
            pre = f"decoder.layers.{i}"
            n = rmsnorm(residual, self.w[pre + ".norm.weight"])
            if has_mamba:
                out = self.mamba(pre + ".mixer", n, states[mi])
                mi += 1
                if n_experts:
                    out = out + self.moe(pre + ".moe", n_experts, rmsnorm(residual, self.w[pre + ".norm_moe.weight"]))
                x = out
            else:
                x = self.moe(pre + ".mixer", n_experts, n)
        y = layernorm(x + residual, self.w["decoder.final_layernorm.weight"], self.w["decoder.final_layernorm.bias"])
        head = self.w.get("output_layer.weight", emb)
        logits = head @ y
        if "output_layer.bias" in self.w:
            logits = logits + self.w["output_layer.bias"]
        return logits
