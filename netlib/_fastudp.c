/* Per-tick UDP snapshots in C (netlib/fastudp.py loads it; pure-Python twins there).
 *
 * snapshot_datagrams(...) writes every Datagram{sequence, server_time_us, chunk_index,
 * chunk_count, snapshot: Snapshot{model, server_tick, tick_time_us, output_width, ids,
 * outputs}} of one tick for one target, byte for byte as protobuf does (proto3: zero
 * scalars and empty strings are left out). send_datagrams(fd, host, port, datagrams)
 * sends them with sendmmsg(2), 64 at a time, without the GIL, and returns how many
 * the kernel took (it stops at the first one refused: a full socket buffer drops the
 * rest, as a UDP sender must never wait).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t n = 1;
    while (value > 0x7F) value >>= 7, n++;
    return n;
}

static Py_ssize_t put_varint(unsigned char *out, uint64_t value) {
    Py_ssize_t n = 0;
    while (value > 0x7F) {
        out[n++] = (unsigned char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    out[n++] = (unsigned char)value;
    return n;
}

/* A varint field (omitted when 0); the bytes it takes, or writes when out is set. */
static Py_ssize_t varint_field(unsigned char *out, unsigned char tag, uint64_t value) {
    if (value == 0) return 0;
    if (out == NULL) return 1 + varint_size(value);
    out[0] = tag;
    return 1 + put_varint(out + 1, value);
}

/* A length-delimited field (omitted when empty unless always). */
static Py_ssize_t bytes_field(unsigned char *out, unsigned char tag, const char *data,
                              Py_ssize_t len, int always) {
    if (len == 0 && !always) return 0;
    if (out == NULL) return 1 + varint_size((uint64_t)len) + len;
    Py_ssize_t n = 0;
    out[n++] = tag;
    n += put_varint(out + n, (uint64_t)len);
    if (len) memcpy(out + n, data, len);
    return n + len;
}

static PyObject *snapshot_datagrams(PyObject *self, PyObject *args) {
    (void)self;
    const char *model, *ids, *outputs;
    Py_ssize_t model_len, ids_len, outputs_len, rows_per_part;
    unsigned long long tick, tick_time_us, width, first_sequence, server_time_us;
    if (!PyArg_ParseTuple(args, "y#KKKy#y#nKK", &model, &model_len, &tick, &tick_time_us,
                          &width, &ids, &ids_len, &outputs, &outputs_len, &rows_per_part,
                          &first_sequence, &server_time_us))
        return NULL;
    Py_ssize_t rows = ids_len / 4;
    if (ids_len % 4 || width == 0 || rows_per_part < 1 ||
        (unsigned long long)outputs_len != (unsigned long long)rows * 4 * width) {
        PyErr_SetString(PyExc_ValueError,
                        "ids must be N uint32, outputs N x width float32, rows_per_part >= 1");
        return NULL;
    }
    Py_ssize_t count = rows == 0 ? 0 : (rows + rows_per_part - 1) / rows_per_part;
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    Py_ssize_t row_bytes = 4 * (Py_ssize_t)width;
    for (Py_ssize_t index = 0; index < count; index++) {
        Py_ssize_t first = index * rows_per_part;
        Py_ssize_t n = rows - first < rows_per_part ? rows - first : rows_per_part;
        const char *part_ids = ids + 4 * first, *part_out = outputs + row_bytes * first;
        Py_ssize_t snap = bytes_field(NULL, 0x0A, model, model_len, 0) +
                          varint_field(NULL, 0x10, tick) +
                          varint_field(NULL, 0x18, tick_time_us) +
                          varint_field(NULL, 0x20, width) +
                          bytes_field(NULL, 0x2A, part_ids, 4 * n, 0) +
                          bytes_field(NULL, 0x32, part_out, row_bytes * n, 0);
        uint64_t sequence = first_sequence + (uint64_t)index;
        Py_ssize_t size = varint_field(NULL, 0x08, sequence) +
                          varint_field(NULL, 0x10, server_time_us) +
                          varint_field(NULL, 0x18, (uint64_t)index) +
                          varint_field(NULL, 0x20, (uint64_t)count) + 1 +
                          varint_size((uint64_t)snap) + snap;
        PyObject *datagram = PyBytes_FromStringAndSize(NULL, size);
        if (datagram == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(datagram);
        Py_ssize_t o = 0;
        o += varint_field(out + o, 0x08, sequence);
        o += varint_field(out + o, 0x10, server_time_us);
        o += varint_field(out + o, 0x18, (uint64_t)index);
        o += varint_field(out + o, 0x20, (uint64_t)count);
        out[o++] = 0x32; /* Datagram.snapshot, field 6 */
        o += put_varint(out + o, (uint64_t)snap);
        o += bytes_field(out + o, 0x0A, model, model_len, 0);
        o += varint_field(out + o, 0x10, tick);
        o += varint_field(out + o, 0x18, tick_time_us);
        o += varint_field(out + o, 0x20, width);
        o += bytes_field(out + o, 0x2A, part_ids, 4 * n, 0);
        o += bytes_field(out + o, 0x32, part_out, row_bytes * n, 0);
        PyList_SET_ITEM(list, index, datagram);
    }
    return list;
}

#define BATCH 64

static PyObject *send_datagrams(PyObject *self, PyObject *args) {
    (void)self;
    int fd, port;
    const char *host;
    PyObject *datagrams;
    if (!PyArg_ParseTuple(args, "isiO!", &fd, &host, &port, &PyList_Type, &datagrams))
        return NULL;
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)port);
    if (port < 1 || port > 65535 || inet_pton(AF_INET, host, &to.sin_addr) != 1) {
        PyErr_SetString(PyExc_ValueError, "host must be an IPv4 literal, port 1..65535");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(datagrams);
    for (Py_ssize_t i = 0; i < total; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(datagrams, i))) {
            PyErr_SetString(PyExc_TypeError, "datagrams must be a list of bytes");
            return NULL;
        }
    }
    /* The list is held (a new reference) while the GIL is released; bytes are immutable. */
    Py_INCREF(datagrams);
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    Py_ssize_t sent = 0;
    int failed = 0;
    while (sent < total && !failed) {
        int batch = total - sent < BATCH ? (int)(total - sent) : BATCH;
        memset(messages, 0, sizeof(struct mmsghdr) * batch);
        for (int k = 0; k < batch; k++) {
            PyObject *datagram = PyList_GET_ITEM(datagrams, sent + k);
            vectors[k].iov_base = PyBytes_AS_STRING(datagram);
            vectors[k].iov_len = (size_t)PyBytes_GET_SIZE(datagram);
            messages[k].msg_hdr.msg_name = &to;
            messages[k].msg_hdr.msg_namelen = sizeof to;
            messages[k].msg_hdr.msg_iov = &vectors[k];
            messages[k].msg_hdr.msg_iovlen = 1;
        }
        int done;
        Py_BEGIN_ALLOW_THREADS
        do {
            done = sendmmsg(fd, messages, (unsigned int)batch, MSG_DONTWAIT);
        } while (done < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
        if (done <= 0) {
            failed = 1; /* EAGAIN, ENOBUFS, no route: the rest is dropped, never waited for */
        } else {
            sent += done;
            if (done < batch) failed = 1;
        }
    }
    Py_DECREF(datagrams);
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef methods[] = {
    {"snapshot_datagrams", snapshot_datagrams, METH_VARARGS,
     "Every Datagram of one snapshot for one target (netlib.fastudp.snapshot_datagrams)."},
    {"send_datagrams", send_datagrams, METH_VARARGS,
     "sendmmsg the datagrams to host:port on fd; how many the kernel took."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastudp",
    .m_doc = "Per-tick UDP snapshots in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastudp(void) { return PyModule_Create(&module); }
