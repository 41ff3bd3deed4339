// A minimal C ABI around daBNN's bnn::Net, loaded by biagent.runtimes.dabnn with ctypes.
//
// Built by the agent on the board against a daBNN build (BIAGENT_DABNN_ROOT):
//   c++ -O2 -std=c++17 -shared -fPIC dabnn_driver.cpp -I$ROOT <glog/flatbuffers includes>
//       $ROOT/.../libdabnn.a <glog and flatbuffers libs> -lpthread
// If daBNN was configured with BNN_NET_BENCHMARK, this file must be compiled with
// -DBNN_BENCHMARK as well (bnn::Net's layout depends on it); the agent adds it when the
// build's CMakeCache.txt says so.
//
// Every entry point catches std::exception (daBNN's BNN_ASSERT throws after logging) and
// reports failure through its return value; dabnn_last_error() has the message.

#include <dabnn/net.h>

#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

thread_local std::string g_last_error;

struct Handle {
    std::shared_ptr<bnn::Net> net;
};

void set_error(const char *where, const std::exception &e) {
    g_last_error = std::string(where) + ": " + e.what();
}

std::shared_ptr<bnn::Mat> float_blob(Handle *h, const char *name) {
    auto mat = h->net->get_blob(name);  // std::out_of_range for an unknown name
    if (!mat) {
        throw std::runtime_error(std::string("blob '") + name + "' has no data");
    }
    if (mat->data_type != bnn::DataType::Float) {
        throw std::runtime_error(std::string("blob '") + name + "' is not a float tensor");
    }
    return mat;
}

}  // namespace

extern "C" {

const char *dabnn_last_error() { return g_last_error.c_str(); }

// Load a .dab from a file. The flags are set before read(), as daBNN requires.
void *dabnn_create(const char *path, int optimize, int run_fconv, int strict) {
    try {
        auto h = std::make_unique<Handle>();
        h->net = bnn::Net::create();
        h->net->optimize = optimize != 0;
        h->net->run_fconv = run_fconv != 0;
        h->net->strict = strict != 0;
        h->net->read(path);
        g_last_error.clear();
        return h.release();
    } catch (const std::exception &e) {
        set_error("read", e);
    } catch (...) {
        g_last_error = "read: unknown exception";
    }
    return nullptr;
}

// Shape of a float blob in memory order [n, rows, pixels per row, channels], i.e. the
// layout dabnn_blob_copy writes. daBNN builds a Mat with w = shape[1], h = shape[2] of the
// model's [1, H, W, C] and stores rows of Mat::h, so rows and pixels are swapped relative to
// that naming; for the square maps the exporter writes the two agree.
int dabnn_blob_shape(void *handle, const char *name, int *nhwc) {
    try {
        auto mat = float_blob(static_cast<Handle *>(handle), name);
        nhwc[0] = mat->n;
        nhwc[1] = mat->h;
        nhwc[2] = mat->w;
        nhwc[3] = mat->elem_c;
        return 0;
    } catch (const std::exception &e) {
        set_error("blob_shape", e);
    }
    return -1;
}

// Run on H*W*C contiguous NHWC floats. daBNN keeps the pointer until the next run.
int dabnn_run(void *handle, float *input) {
    try {
        static_cast<Handle *>(handle)->net->run(input);
        return 0;
    } catch (const std::exception &e) {
        set_error("run", e);
    } catch (...) {
        g_last_error = "run: unknown exception";
    }
    return -1;
}

// Number of floats dabnn_blob_copy writes for this blob (n*h*w*c), or -1.
long long dabnn_blob_size(void *handle, const char *name) {
    try {
        auto mat = float_blob(static_cast<Handle *>(handle), name);
        return static_cast<long long>(mat->n) * mat->h * mat->w * mat->c;
    } catch (const std::exception &e) {
        set_error("blob_size", e);
    }
    return -1;
}

// Copy a float blob out, dropping daBNN's 16-byte row padding (rows of w*c floats, hstep apart).
int dabnn_blob_copy(void *handle, const char *name, float *out, long long capacity) {
    try {
        auto mat = float_blob(static_cast<Handle *>(handle), name);
        const size_t rows = static_cast<size_t>(mat->n) * mat->h;
        const size_t row = static_cast<size_t>(mat->w) * mat->c;
        if (static_cast<long long>(rows * row) > capacity) {
            throw std::runtime_error("output buffer too small");
        }
        const float *src = static_cast<const float *>(mat->data);
        if (src == nullptr) {
            throw std::runtime_error(std::string("blob '") + name + "' has no data (run first)");
        }
        for (size_t r = 0; r < rows; ++r) {
            std::memcpy(out + r * row, src + r * mat->hstep, row * sizeof(float));
        }
        return 0;
    } catch (const std::exception &e) {
        set_error("blob_copy", e);
    }
    return -1;
}

void dabnn_destroy(void *handle) { delete static_cast<Handle *>(handle); }

}  // extern "C"

#ifdef DABNN_DRIVER_SERVER
// The same entry points as an executable, for a libdabnn.a compiled without -fPIC (CMake's
// default for a static library), which cannot be linked into a shared object. The agent
// starts it and speaks a small binary protocol on its stdin/stdout (little endian):
//   'C' u32 len, path                -> status              (dabnn_create, flags on)
//   'S' u32 len, name                -> status, i32[4]      (dabnn_blob_shape)
//   'R' u64 bytes, floats            -> status, u64 ns      (dabnn_run, timed here)
//   'Y' u32 len, name                -> status, i64 n, f32[n] (dabnn_blob_size + copy)
//   'Q'                              -> exits
// status: u8 0, or u8 1 + u32 len + message. Anything daBNN prints goes to stderr: the
// protocol has the original stdout to itself.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <unistd.h>
#include <vector>

namespace {

FILE *g_in = nullptr, *g_out = nullptr;

bool read_exact(void *buf, size_t n) { return n == 0 || std::fread(buf, 1, n, g_in) == n; }

template <typename T>
bool read_value(T *v) { return read_exact(v, sizeof(T)); }

bool read_string(std::string *s) {
    uint32_t n = 0;
    if (!read_value(&n) || n > (1u << 20)) return false;
    s->resize(n);
    return read_exact(&(*s)[0], n);
}

template <typename T>
void write_value(const T &v) { std::fwrite(&v, sizeof(T), 1, g_out); }

void reply_ok() { write_value<uint8_t>(0); }

void reply_error() {
    write_value<uint8_t>(1);
    const std::string &msg = g_last_error;
    write_value<uint32_t>(static_cast<uint32_t>(msg.size()));
    std::fwrite(msg.data(), 1, msg.size(), g_out);
}

}  // namespace

int main() {
    int proto_fd = dup(1);
    dup2(2, 1);  // daBNN's own prints must not reach the protocol
    g_in = stdin;
    g_out = fdopen(proto_fd, "wb");
    void *handle = nullptr;
    std::vector<float> input;
    for (;;) {
        uint8_t op = 0;
        if (!read_value(&op) || op == 'Q') break;
        std::string name;
        if (op == 'C') {
            if (!read_string(&name)) break;
            if (handle) dabnn_destroy(handle);
            handle = dabnn_create(name.c_str(), 1, 1, 1);
            handle ? reply_ok() : reply_error();
        } else if (op == 'S') {
            if (!read_string(&name)) break;
            int32_t shape[4] = {0, 0, 0, 0};
            int dims[4];
            if (handle && dabnn_blob_shape(handle, name.c_str(), dims) == 0) {
                for (int i = 0; i < 4; ++i) shape[i] = dims[i];
                reply_ok();
                std::fwrite(shape, sizeof(shape), 1, g_out);
            } else {
                if (!handle) g_last_error = "no model loaded";
                reply_error();
            }
        } else if (op == 'R') {
            uint64_t bytes = 0;
            if (!read_value(&bytes) || bytes % sizeof(float) != 0 || bytes > (1ull << 34)) break;
            input.resize(bytes / sizeof(float));
            if (!read_exact(input.data(), bytes)) break;
            auto t0 = std::chrono::steady_clock::now();
            int rc = handle ? dabnn_run(handle, input.data()) : -1;
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
            if (rc == 0) {
                reply_ok();
                write_value<uint64_t>(static_cast<uint64_t>(ns.count()));
            } else {
                if (!handle) g_last_error = "no model loaded";
                reply_error();
            }
        } else if (op == 'Y') {
            if (!read_string(&name)) break;
            long long n = handle ? dabnn_blob_size(handle, name.c_str()) : -1;
            std::vector<float> out(n > 0 ? static_cast<size_t>(n) : 0);
            if (n >= 0 && dabnn_blob_copy(handle, name.c_str(), out.data(), n) == 0) {
                reply_ok();
                write_value<int64_t>(n);
                std::fwrite(out.data(), sizeof(float), out.size(), g_out);
            } else {
                if (!handle) g_last_error = "no model loaded";
                reply_error();
            }
        } else {
            g_last_error = "unknown request";
            reply_error();
        }
        std::fflush(g_out);
    }
    if (handle) dabnn_destroy(handle);
    return 0;
}
#endif  // DABNN_DRIVER_SERVER
