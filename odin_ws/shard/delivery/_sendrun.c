/*
 * odin_ws.shard.delivery._sendrun: the per-connection loop of the shard's
 * hot path, in C (docs/architecture.md, "The native send loop").
 *
 * send_runs(runs, writes) takes the runs of frames one write of the fan-out
 * has for its subscribers, runs = [(bufs, frames, outboxes), ...], and the
 * reactor's set of descriptors registered for writing. A run's `bufs` is its
 * joined frames, either one bytes object for every Outbox or a tuple of them
 * indexed by an Outbox's `variant` (0: plain, others compressed,
 * odin_ws/shard/delivery/deflate.py; an Outbox without the attribute is
 * variant 0), None for a variant not built. For every Outbox that may be
 * sent to directly now (the same test as Fanout.write's inline path:
 * `inline` true, `paused`, `closed`, `tracking` false, nothing in its
 * `queue`, its `fdno` not in `writes`, and a buffer of its variant in every
 * run it is in), it sends everything the runs have for it in one
 * send()/sendmsg() (MSG_DONTWAIT), in run order. It returns
 *
 *   (frames, nbytes, whole, rest, defer, plain, wire)
 *
 * frames, nbytes: frames and bytes of the sends the kernel took whole;
 * whole: how many such sends; plain, wire: for the Outboxes of a variant
 * other than 0 it sent to (whole or in part), the bytes of variant 0 of
 * their runs and the bytes due to them; rest: [(outbox, buf, sent, frames), ...] for
 * the sends the kernel took only part of (sent > 0) or refused (EAGAIN,
 * EPIPE, ECONNRESET, ...: sent == 0), buf being everything due to that
 * Outbox; defer: [(outbox, run index), ...] for the Outboxes that may not
 * be sent to directly, in run order per Outbox. Python does the rest:
 * Outbox.write_rest for `rest`, the Outbox's queue and policies for `defer`.
 *
 * After a whole send, an Outbox whose `cap` is not its `limit` gets both
 * `room` and `cap` set to `limit`, as Fanout.write does (Twisted holds
 * nothing for it). Nothing else of an Outbox is written here; no Python
 * code runs during the call (the attributes read are slots), and the sends
 * run with the GIL released.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* The Outbox attributes read (and, after a whole send, written). */
enum { A_QUEUE, A_INLINE, A_PAUSED, A_CLOSED, A_TRACKING, A_FDNO, A_CAP, A_LIMIT, A_ROOM,
       A_VARIANT, NATTR };
static const char *attr_names[NATTR] = {"queue", "inline", "paused", "closed", "tracking",
                                        "fdno", "cap", "limit", "room", "variant"};

/* Variants of a run's buffer at most (odin_ws/shard/delivery/deflate.py: VARIANTS). */
#define NVARIANTS 8
static PyObject *attr_strs[NATTR];
/* The int 0 (Outbox.variant of a plain connection). */
static PyObject *zero;

/*
 * Where a class keeps those attributes: the Outbox has __slots__, so each is
 * a member descriptor of its type at a fixed offset in the instance, read
 * here without PyObject_GetAttr's lookup (a tenth of its instructions).
 * Valid while the type is unchanged (tp_version_tag); an attribute that is
 * not a plain object slot (offset -1) is read with PyObject_GetAttr.
 */
typedef struct {
    PyTypeObject *type;     /* strong reference */
    unsigned int version;
    Py_ssize_t offset[NATTR];
} Layout;

#define NLAYOUTS 4
static Layout layouts[NLAYOUTS];
static int next_layout;
/* The layout found last: every Outbox of a write is usually of one class. */
static Layout *last;

static Layout *
layout_find(PyTypeObject *type)
{
    for (int i = 0; i < NLAYOUTS; i++) {
        /* A tag of 0 is no tag: such a type is looked at again every time. */
        if (layouts[i].type == type && type->tp_version_tag == layouts[i].version
                && layouts[i].version != 0)
            return last = &layouts[i];
    }
    Layout *layout = &layouts[next_layout];
    next_layout = (next_layout + 1) % NLAYOUTS;
    Py_XDECREF(layout->type);
    Py_INCREF(type);
    layout->type = type;
    for (int a = 0; a < NATTR; a++) {
        layout->offset[a] = -1;
        /* On the class, a member descriptor is itself (the lookup tags the type). */
        PyObject *d = PyObject_GetAttr((PyObject *)type, attr_strs[a]);
        if (d == NULL) {
            PyErr_Clear();  /* read with PyObject_GetAttr, which raises the error */
            continue;
        }
        if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
                layout->offset[a] = member->offset;
        }
        Py_DECREF(d);
    }
    layout->version = type->tp_version_tag;
    return last = layout;
}

/* The layout of `type`: the last one found, inline, else layout_find. */
static inline Layout *
layout_of(PyTypeObject *type)
{
    if (last != NULL && last->type == type && type->tp_version_tag == last->version
            && last->version != 0)
        return last;
    return layout_find(type);
}

/* box.<attribute a>, a new reference; NULL with AttributeError if unset. */
static PyObject *
get(PyObject *box, const Layout *layout, int a)
{
    Py_ssize_t offset = layout->offset[a];
    if (offset < 0)
        return PyObject_GetAttr(box, attr_strs[a]);
    PyObject *v = *(PyObject **)((char *)box + offset);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                     Py_TYPE(box)->tp_name, attr_names[a]);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

/* box.<attribute a> = value */
static int
set(PyObject *box, const Layout *layout, int a, PyObject *value)
{
    Py_ssize_t offset = layout->offset[a];
    if (offset < 0)
        return PyObject_SetAttr(box, attr_strs[a], value);
    PyObject **slot = (PyObject **)((char *)box + offset);
    PyObject *old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
    return 0;
}

/* One Outbox's share of the write. */
typedef struct {
    PyObject *box;          /* strong reference */
    int fd;                 /* -1: not to be sent to directly */
    int variant;            /* which buffer of each run it gets */
    Py_ssize_t first, last; /* its first and last node (nodes: run order) */
    Py_ssize_t nruns;
    Py_ssize_t frames;
    Py_ssize_t size;
    Py_ssize_t plain;       /* the size of variant 0 of its runs */
    Py_ssize_t sent;        /* bytes the kernel took */
} Target;

/* One (Outbox, run) pair, chained per Outbox. */
typedef struct {
    Py_ssize_t run;
    Py_ssize_t next;
} Node;

typedef struct {
    Target *targets;
    Py_ssize_t ntargets, captargets;
    Node *nodes;
    Py_ssize_t nnodes, capnodes;
    /* With several runs: Outbox -> target + 1 by identity (open addressing). */
    int mapped;
    Py_ssize_t *slots;
    size_t mask;
} Plan;

static size_t
hash_ptr(const PyObject *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p >> 4;
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x ^ (x >> 29));
}

/* Room for one more target in the map (kept at most half full). */
static int
map_reserve(Plan *plan)
{
    if (plan->slots != NULL && (size_t)(plan->ntargets + 1) * 2 <= plan->mask + 1)
        return 0;
    size_t n = plan->slots != NULL ? (plan->mask + 1) * 2 : 256;
    while ((size_t)(plan->ntargets + 1) * 2 > n)
        n *= 2;
    Py_ssize_t *slots = PyMem_Calloc(n, sizeof(Py_ssize_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t t = 0; t < plan->ntargets; t++) {
        size_t i = hash_ptr(plan->targets[t].box) & (n - 1);
        while (slots[i] != 0)
            i = (i + 1) & (n - 1);
        slots[i] = t + 1;
    }
    PyMem_Free(plan->slots);
    plan->slots = slots;
    plan->mask = n - 1;
    return 0;
}

/* The target of `box`, or -1 with `*free_slot` where it goes. */
static Py_ssize_t
map_find(const Plan *plan, const PyObject *box, size_t *free_slot)
{
    size_t i = hash_ptr(box) & plan->mask;
    for (;;) {
        Py_ssize_t v = plan->slots[i];
        if (v == 0) {
            *free_slot = i;
            return -1;
        }
        if (plan->targets[v - 1].box == box)
            return v - 1;
        i = (i + 1) & plan->mask;
    }
}

static int
grow(void **array, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *p = PyMem_Realloc(*array, (size_t)n * item);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = p;
    *cap = n;
    return 0;
}

/* box.<attribute a> as a borrowed reference when it is a slot, else NULL (no error set). */
static inline PyObject *
peek(PyObject *box, const Layout *layout, int a)
{
    Py_ssize_t offset = layout->offset[a];
    return offset < 0 ? NULL : *(PyObject **)((char *)box + offset);
}

/* Is box.<attribute a> true? -1 on error. */
static inline int
attr_true(PyObject *box, const Layout *layout, int a)
{
    PyObject *v = peek(box, layout, a);
    if (v == Py_True)
        return 1;
    if (v == Py_False)
        return 0;
    v = get(box, layout, a);
    if (v == NULL)
        return -1;
    int r = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/*
 * The descriptor to send to `box` on directly, -1 if it must take the
 * Python path, -2 on error.
 */
static int
direct_fd(PyObject *box, const Layout *layout, PyObject *writes)
{
    int r = attr_true(box, layout, A_INLINE);
    if (r <= 0)
        return r < 0 ? -2 : -1;
    PyObject *queue = peek(box, layout, A_QUEUE);
    Py_ssize_t queued;
    if (queue != NULL && PyList_CheckExact(queue)) {
        queued = PyList_GET_SIZE(queue);
    } else {
        if ((queue = get(box, layout, A_QUEUE)) == NULL)
            return -2;
        queued = PyObject_Length(queue);
        Py_DECREF(queue);
    }
    if (queued != 0)
        return queued < 0 ? -2 : -1;
    static const int flags[] = {A_PAUSED, A_CLOSED, A_TRACKING};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        r = attr_true(box, layout, flags[i]);
        if (r != 0)
            return r < 0 ? -2 : -1;
    }
    PyObject *fdno = get(box, layout, A_FDNO);
    if (fdno == NULL)
        return -2;
    /* Usually empty: Twisted holds bytes for no connection. */
    r = PySet_GET_SIZE(writes) == 0 ? 0 : PySet_Contains(writes, fdno);
    long fd = r == 0 ? PyLong_AsLong(fdno) : -1;
    Py_DECREF(fdno);
    if (r < 0 || (fd == -1 && PyErr_Occurred()))
        return -2;
    if (r == 1 || fd < 0 || fd > INT_MAX)
        return -1;  /* Twisted holds bytes for it (or is closing it) */
    return (int)fd;
}

/* box.variant, 0 if it has none; -1 if out of range, -2 on error. */
static int
variant_of(PyObject *box, const Layout *layout)
{
    if (peek(box, layout, A_VARIANT) == zero)
        return 0;   /* PLAIN: small ints are one object each */
    PyObject *v = get(box, layout, A_VARIANT);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -2;
        PyErr_Clear();
        return 0;
    }
    long variant = PyLong_AsLong(v);
    Py_DECREF(v);
    if (variant == -1 && PyErr_Occurred())
        return -2;
    return variant >= 0 && variant < NVARIANTS ? (int)variant : -1;
}

static void
plan_free(Plan *plan)
{
    for (Py_ssize_t i = 0; i < plan->ntargets; i++)
        Py_DECREF(plan->targets[i].box);
    PyMem_Free(plan->targets);
    PyMem_Free(plan->nodes);
    PyMem_Free(plan->slots);
}

/* Add (box, run) to the plan; bufs and sizes: NVARIANTS per run (NULL: no such variant). */
static int
plan_add(Plan *plan, PyObject *box, Py_ssize_t run, Py_ssize_t frames, char **bufs,
         const Py_ssize_t *sizes, PyObject *writes)
{
    Py_ssize_t t = -1;
    size_t slot = 0;
    if (plan->mapped) {
        if (map_reserve(plan) < 0)
            return -1;
        t = map_find(plan, box, &slot);
    }
    if (t < 0) {
        const Layout *layout = layout_of(Py_TYPE(box));
        int fd = direct_fd(box, layout, writes);
        if (fd == -2)
            return -1;
        int variant = 0;
        if (fd >= 0) {
            variant = variant_of(box, layout);
            if (variant == -2)
                return -1;
            if (variant < 0) {
                variant = 0;
                fd = -1;    /* a variant no run has: Python's */
            }
        }
        if (grow((void **)&plan->targets, &plan->captargets, plan->ntargets + 1,
                 sizeof(Target)) < 0)
            return -1;
        t = plan->ntargets;
        if (plan->mapped)
            plan->slots[slot] = t + 1;
        Target *target = &plan->targets[t];
        Py_INCREF(box);
        target->box = box;
        target->fd = fd;
        target->variant = variant;
        target->first = target->last = -1;
        target->nruns = target->frames = target->size = target->plain = target->sent = 0;
        plan->ntargets++;
    }
    if (grow((void **)&plan->nodes, &plan->capnodes, plan->nnodes + 1, sizeof(Node)) < 0)
        return -1;
    Target *target = &plan->targets[t];
    Py_ssize_t n = plan->nnodes++;
    plan->nodes[n].run = run;
    plan->nodes[n].next = -1;
    if (target->last >= 0)
        plan->nodes[target->last].next = n;
    else
        target->first = n;
    target->last = n;
    target->nruns++;
    target->frames += frames;
    Py_ssize_t at = run * NVARIANTS + target->variant;
    if (bufs[at] == NULL)
        target->fd = -1;    /* this run has no buffer of its variant: all of it is Python's */
    target->size += sizes[at];
    target->plain += sizes[run * NVARIANTS];
    return 0;
}

/* Send everything due to `target`; its `sent` is what the kernel took. */
static void
send_target(Target *target, const Node *nodes, char **bufs, Py_ssize_t *sizes,
            struct iovec *iov)
{
    Py_ssize_t total = 0;
    ssize_t r;
    int v = target->variant;
    if (target->nruns == 1) {
        Py_ssize_t at = nodes[target->first].run * NVARIANTS + v;
        do {
            r = send(target->fd, bufs[at], (size_t)sizes[at], MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        target->sent = r < 0 ? 0 : r;
        return;
    }
    /* Several runs: IOV_MAX of them per sendmsg, until the kernel stops taking. */
    Py_ssize_t n = target->first;
    while (n >= 0) {
        int count = 0;
        Py_ssize_t batch = 0;
        for (; n >= 0 && count < IOV_MAX; n = nodes[n].next, count++) {
            Py_ssize_t at = nodes[n].run * NVARIANTS + v;
            iov[count].iov_base = bufs[at];
            iov[count].iov_len = (size_t)sizes[at];
            batch += sizes[at];
        }
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)count;
        do {
            r = sendmsg(target->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        if (r > 0)
            total += r;
        if (r != batch)
            break;
    }
    target->sent = total;
}

/* Everything due to `target`, joined (for a send the kernel did not take whole). */
static PyObject *
joined(const Target *target, const Node *nodes, PyObject **objs, char **bufs,
       Py_ssize_t *sizes)
{
    int v = target->variant;
    if (target->nruns == 1) {
        PyObject *buf = objs[nodes[target->first].run * NVARIANTS + v];
        Py_INCREF(buf);
        return buf;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, target->size);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    for (Py_ssize_t n = target->first; n >= 0; n = nodes[n].next) {
        Py_ssize_t at = nodes[n].run * NVARIANTS + v;
        memcpy(p, bufs[at], (size_t)sizes[at]);
        p += sizes[at];
    }
    return out;
}

/* After a whole send: room = cap = limit unless cap already is the limit. */
static int
reset_room(PyObject *box)
{
    const Layout *layout = layout_of(Py_TYPE(box));
    PyObject *cap = peek(box, layout, A_CAP);
    if (cap != NULL && cap == peek(box, layout, A_LIMIT))
        return 0;
    cap = get(box, layout, A_CAP);
    if (cap == NULL)
        return -1;
    PyObject *limit = get(box, layout, A_LIMIT);
    if (limit == NULL) {
        Py_DECREF(cap);
        return -1;
    }
    int same = cap == limit ? 1 : PyObject_RichCompareBool(cap, limit, Py_EQ);
    int r = same;
    if (same == 0)
        r = (set(box, layout, A_ROOM, limit) < 0 || set(box, layout, A_CAP, limit) < 0) ? -1 : 0;
    Py_DECREF(cap);
    Py_DECREF(limit);
    return r < 0 ? -1 : 0;
}

static PyObject *
send_runs(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *runs, *writes;
    if (!PyArg_ParseTuple(args, "O!O!:send_runs", &PyList_Type, &runs, &PySet_Type, &writes))
        return NULL;
    Py_ssize_t nruns = PyList_GET_SIZE(runs);
    /* One run: each Outbox appears once. Several: a map finds an Outbox's earlier runs. */
    Plan plan = {NULL, 0, 0, NULL, 0, 0, nruns > 1, NULL, 0};
    PyObject *rest = NULL, *defer = NULL, *result = NULL;
    PyObject **objs = NULL;
    char **bufs = NULL;
    Py_ssize_t *sizes = NULL;
    struct iovec *iov = NULL;
    /* The runs list is the caller's: hold it while its bytes are read unlocked. */
    Py_INCREF(runs);
    size_t slots = ((size_t)nruns + 1) * NVARIANTS;
    objs = PyMem_Calloc(slots, sizeof(PyObject *));
    bufs = PyMem_Calloc(slots, sizeof(char *));
    sizes = PyMem_Calloc(slots, sizeof(Py_ssize_t));
    if (objs == NULL || bufs == NULL || sizes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nruns; i++) {
        PyObject *run = PyList_GET_ITEM(runs, i);
        PyObject *variants, *boxes;
        Py_ssize_t frames;
        if (!PyTuple_Check(run) || !PyArg_ParseTuple(run, "OnO:send_runs", &variants, &frames,
                                                     &boxes)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "send_runs: a run is (bufs, int, outboxes)");
            goto done;
        }
        /* The runs list (held) holds the run, which holds its buffers. */
        Py_ssize_t nvar = 1;
        PyObject **vs = &variants;
        if (PyTuple_Check(variants)) {
            nvar = PyTuple_GET_SIZE(variants);
            vs = &PyTuple_GET_ITEM(variants, 0);
        }
        if (nvar < 1 || nvar > NVARIANTS) {
            PyErr_SetString(PyExc_ValueError, "send_runs: 1 to 8 buffers per run");
            goto done;
        }
        for (Py_ssize_t v = 0; v < nvar; v++) {
            PyObject *buf = vs[v];
            if (buf == Py_None && v > 0)
                continue;
            if (!PyBytes_Check(buf)) {
                PyErr_SetString(PyExc_TypeError, "send_runs: a run's buffers are bytes "
                                "(None for a variant not built, but never the first)");
                goto done;
            }
            Py_ssize_t at = i * NVARIANTS + v;
            objs[at] = buf;
            bufs[at] = PyBytes_AS_STRING(buf);
            sizes[at] = PyBytes_GET_SIZE(buf);
        }
        PyObject *seq = PySequence_Fast(boxes, "send_runs: outboxes must be iterable");
        if (seq == NULL)
            goto done;
        Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        /* Room for all of them at once (a target per Outbox at most). */
        if (grow((void **)&plan.targets, &plan.captargets, plan.ntargets + count,
                 sizeof(Target)) < 0
                || grow((void **)&plan.nodes, &plan.capnodes, plan.nnodes + count,
                        sizeof(Node)) < 0) {
            Py_DECREF(seq);
            goto done;
        }
        for (Py_ssize_t j = 0; j < count; j++) {
            if (plan_add(&plan, items[j], i, frames, bufs, sizes, writes) < 0) {
                Py_DECREF(seq);
                goto done;
            }
        }
        Py_DECREF(seq);
    }
    /* Filled before each use: no need to clear it. */
    iov = PyMem_Malloc(IOV_MAX * sizeof(struct iovec));
    if (iov == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < plan.ntargets; t++) {
        if (plan.targets[t].fd >= 0)
            send_target(&plan.targets[t], plan.nodes, bufs, sizes, iov);
    }
    Py_END_ALLOW_THREADS
    if ((rest = PyList_New(0)) == NULL || (defer = PyList_New(0)) == NULL)
        goto done;
    Py_ssize_t frames = 0, nbytes = 0, whole = 0, plain = 0, wire = 0;
    for (Py_ssize_t t = 0; t < plan.ntargets; t++) {
        Target *target = &plan.targets[t];
        PyObject *item;
        if (target->fd >= 0 && target->variant != 0) {
            plain += target->plain;
            wire += target->size;
        }
        if (target->fd < 0) {
            for (Py_ssize_t n = target->first; n >= 0; n = plan.nodes[n].next) {
                item = Py_BuildValue("(On)", target->box, plan.nodes[n].run);
                if (item == NULL || PyList_Append(defer, item) < 0) {
                    Py_XDECREF(item);
                    goto done;
                }
                Py_DECREF(item);
            }
        } else if (target->sent == target->size) {
            frames += target->frames;
            nbytes += target->size;
            whole++;
            if (reset_room(target->box) < 0)
                goto done;
        } else {
            PyObject *buf = joined(target, plan.nodes, objs, bufs, sizes);
            if (buf == NULL)
                goto done;
            item = Py_BuildValue("(ONnn)", target->box, buf, target->sent, target->frames);
            if (item == NULL || PyList_Append(rest, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
        }
    }
    result = Py_BuildValue("(nnnOOnn)", frames, nbytes, whole, rest, defer, plain, wire);
done:
    plan_free(&plan);
    Py_XDECREF(rest);
    Py_XDECREF(defer);
    PyMem_Free(objs);
    PyMem_Free(bufs);
    PyMem_Free(sizes);
    PyMem_Free(iov);
    Py_DECREF(runs);
    return result;
}

static PyMethodDef methods[] = {
    {"send_runs", send_runs, METH_VARARGS,
     "send_runs(runs, writes) -> (frames, nbytes, whole, rest, defer, plain, wire)\n\n"
     "Send each run [(bufs, frames, outboxes), ...] to every Outbox that may be sent to\n"
     "directly (one send per Outbox for all its runs); see the module's source."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sendrun",
    "The fan-out's per-connection send loop in C (odin_ws/shard/delivery/nativesend.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sendrun(void)
{
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    for (int a = 0; a < NATTR; a++) {
        attr_strs[a] = PyUnicode_InternFromString(attr_names[a]);
        if (attr_strs[a] == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
