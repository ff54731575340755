"""Read a checkpoint's pickle opcode by opcode, executing nothing, before any unpickler sees it.

:func:`scan_pickle` follows the opcode stream the way an unpickler would, but keeps only the
shape of what would be built (constants, containers, calls of named globals), so a hostile
file costs time and memory in proportion to its size. It refuses what checkpoints never hold
and what makes unpickling, hashing or printing blow up:

- opcodes torch's weights-only unpickler does not read, and globals outside ``allowed``;
- containers nested deeper than :data:`MAX_DEPTH`, and shared references whose expanded tree
  is far larger than the stream (a DAG of tuples doubles its printed / hashed size per level);
- dictionary keys and set members other than constants or flat tuples of constants;
- containers changed after they were placed in another one (``torch.save`` never does that);
- ``bytearray`` and ``_codecs.encode`` called with anything but their pickled-bytes use;
- persistent ids that are not ``('storage', <storage type>, key, location, numel, ...)``, and
  tensors (``_rebuild_tensor_v2`` / ``_rebuild_parameter``) that view more elements than
  their storage holds (a stride-0 view of 4 bytes at shape (49, 2**24) is 3.3 GB once made
  contiguous).

It returns the storages the pickle declares, ``{key: nbytes}``, so the caller can compare them
with the bytes the file holds before anything is allocated. Messages carry type names and
truncated text only, never the ``repr`` of something the file built.
"""
import pickletools
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Callable, Dict, Iterable, Optional

#: Containers within containers that a checkpoint may nest (an optimizer state is about 6).
MAX_DEPTH = 64
#: Items of a tuple used as a dictionary key or set member.
MAX_KEY_ITEMS = 16
#: Dimensions of a tensor.
MAX_DIMS = 16

_CONTAINERS = ('tuple', 'list', 'dict', 'set', 'object')
_TENSOR_REBUILDS = ('torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_tensor_v3',
                    'torch._utils._rebuild_tensor')
_MUTABLE_CALLS = ('collections.OrderedDict', 'collections.Counter')


class PickleRefused(ValueError):
    """The pickle holds something a checkpoint never holds (the reason is the message)."""


class UnknownGlobal(PickleRefused):
    """The pickle names a global outside the allowed ones (loading it needs full pickle)."""


class PickleTruncated(ValueError):
    """The pickle stream ends or breaks before its STOP opcode."""


def bounded(text, limit: int = 80) -> str:
    """``text`` (a str from the file) quoted and cut to ``limit`` characters."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + '...')


class _Node:
    """What an opcode would have built: its kind, a constant's value or a global's name, the
    children of a tuple, nesting depth, expanded tree size, and whether it sits inside another
    container already (``sealed``)."""
    __slots__ = ('kind', 'value', 'depth', 'size', 'sealed', 'numel', 'keyable')

    def __init__(self, kind: str, value=None, children: Iterable['_Node'] = (), numel=None):
        self.kind, self.value, self.numel, self.sealed = kind, value, numel, False
        self.keyable = True  # a list: every item is a valid key (set(list) hashes them)
        children = list(children)
        self.depth = 1 + max((c.depth for c in children), default=0) if kind in _CONTAINERS \
            else 0
        self.size = 1 + sum(c.size for c in children)
        if kind == 'tuple':
            self.value = tuple(children)

    def describe(self) -> str:
        if self.kind == 'const':
            return f'{type(self.value).__name__} {bounded(self.value)}' \
                if isinstance(self.value, str) else type(self.value).__name__
        if self.kind == 'global':
            return bounded(self.value)
        if self.kind == 'object':
            return f'result of {bounded(self.value)}'
        return self.kind


_MARK = _Node('mark')


def _is_key(node: _Node) -> bool:
    """A constant, a global (``torch.float32``) or a flat tuple of those: cheap to hash."""
    if node.kind in ('const', 'global'):
        return True
    return node.kind == 'tuple' and len(node.value) <= MAX_KEY_ITEMS and all(
        c.kind in ('const', 'global') for c in node.value)


def _ints(node: _Node, what: str) -> tuple:
    if node.kind != 'tuple' or len(node.value) > MAX_DIMS or not all(
            c.kind == 'const' and type(c.value) is int and c.value >= 0 for c in node.value):
        raise PickleRefused(f'a tensor {what} that is not a tuple of at most {MAX_DIMS} '
                            f'non-negative ints ({node.describe()})')
    return tuple(c.value for c in node.value)


class _Scan:
    def __init__(self, allowed: Callable[[str], bool],
                 element_size: Callable[[str], Optional[int]], file_size: int):
        self.allowed, self.element_size = allowed, element_size
        self.stack, self.metastack, self.memo = [], [], {}
        self.declared: Dict[str, int] = {}
        self.file_size = file_size
        self.size_budget = 4 * file_size + 10_000
        self.view_bytes = 0

    # -- helpers
    def pop(self) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused('an opcode pops an empty stack')
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.metastack:
            raise PickleRefused('an opcode pops to a MARK that was never set')
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def bound(self, node: _Node) -> _Node:
        """``node``, unless it nests too deep or expands beyond the file's size budget."""
        if node.depth > MAX_DEPTH:
            raise PickleRefused(f'containers nested deeper than {MAX_DEPTH} levels')
        if node.size > self.size_budget:
            raise PickleRefused('shared references that expand to a tree far larger than the '
                                'file (a pickle bomb)')
        return node

    def push(self, node: _Node) -> None:
        self.stack.append(self.bound(node))

    def container(self, kind, children=(), value=None, numel=None) -> _Node:
        children = list(children)
        for child in children:
            if child is _MARK:
                raise PickleRefused('a MARK inside a container')
            child.sealed = True
        return _Node(kind, value, children, numel)

    def fill(self, target: _Node, items: list, what: str, keyed: bool) -> None:
        """APPEND(S) / SETITEM(S) on ``target``: grows its depth and size in place."""
        if target.kind not in ('list', 'dict', 'object') or (
                target.kind == 'object' and target.value not in _MUTABLE_CALLS):
            raise PickleRefused(f'{what} on a {target.describe()}')
        if target.sealed:
            raise PickleRefused(f'{what} on a container already placed in another one')
        if keyed:
            if len(items) % 2:
                raise PickleRefused(f'{what} with an odd number of items')
            for key in items[0::2]:
                if not _is_key(key):
                    raise PickleRefused(f'{key.describe()} used as a dictionary key; '
                                        f'checkpoint keys are constants or flat tuples of them')
        for item in items:
            if item is _MARK:
                raise PickleRefused('a MARK inside a container')
            item.sealed = True
            target.keyable = target.keyable and _is_key(item)
            target.depth = max(target.depth, item.depth + 1)
            target.size += item.size
        self.bound(target)

    # -- calls
    def call(self, func: _Node, args: _Node) -> _Node:
        if func.kind != 'global':
            raise PickleRefused(f'a call of a {func.describe()}, not of a named global')
        if args.kind != 'tuple':
            raise PickleRefused(f'{bounded(func.value)} called with a {args.describe()}')
        name, argv = func.value, args.value
        if name == 'builtins.bytearray' or name == '_codecs.encode':
            if not (1 <= len(argv) <= 2 and all(a.kind == 'const' and type(a.value) in (str, bytes)
                                                for a in argv)
                    and (len(argv) == 1 or str(argv[1].value).lower().replace('-', '')
                         == 'latin1')):
                raise PickleRefused(f'{name} called with other than (text, "latin1"), the way '
                                    f'pickle writes bytes')
        elif name == 'builtins.set':  # set(list) hashes every item
            if len(argv) > 1 or (argv and not (argv[0].kind == 'list' and argv[0].keyable)):
                raise PickleRefused('set() called with other than one list of constants')
        elif name in _MUTABLE_CALLS:  # OrderedDict() / Counter(dict): keys already checked
            if len(argv) > 1 or (argv and argv[0].kind != 'dict'):
                raise PickleRefused(f'{name} called with other than one dict')
        elif name in _TENSOR_REBUILDS:
            self.tensor(name, argv)
        elif name == 'torch._utils._rebuild_parameter':
            if not argv or argv[0].kind != 'object' or argv[0].value not in _TENSOR_REBUILDS:
                raise PickleRefused('a Parameter built from other than a tensor')
        return self.container('object', argv, value=name)

    def tensor(self, name: str, argv: tuple) -> None:
        """Refuse a tensor whose view reaches beyond its storage or holds more elements than
        it (overlapping or broadcast strides); count the bytes the views make."""
        if len(argv) < 4 or argv[0].kind != 'storage':
            raise PickleRefused(f'{name} without a storage, offset, size and stride')
        storage, offset = argv[0], argv[1]
        if offset.kind != 'const' or type(offset.value) is not int or offset.value < 0:
            raise PickleRefused(f'{name} with a storage offset that is not an int >= 0')
        size, stride = _ints(argv[2], 'size'), _ints(argv[3], 'stride')
        if len(size) != len(stride):
            raise PickleRefused(f'{name} with {len(size)} sizes and {len(stride)} strides')
        numel = 1
        for n in size:
            numel *= n
        if numel == 0:
            return
        extent = offset.value + 1 + sum((n - 1) * st for n, st in zip(size, stride))
        if numel > storage.numel or extent > storage.numel:
            raise PickleRefused(
                f'a tensor of shape {size} (stride {stride}, offset {offset.value}) views '
                f'{max(numel, extent)} elements of a storage of {storage.numel}')
        self.view_bytes += numel * storage.value

    def persistent(self, pid: _Node) -> _Node:
        fields = pid.value if pid.kind == 'tuple' else ()
        if not (5 <= len(fields) <= 6 and fields[0].kind == 'const'
                and fields[0].value in ('storage', b'storage') and fields[1].kind == 'global'
                and fields[2].kind == 'const' and type(fields[2].value) in (str, bytes)
                and fields[3].kind == 'const' and type(fields[3].value) in (str, bytes)
                and fields[4].kind == 'const' and type(fields[4].value) is int
                and fields[4].value >= 0):
            raise PickleRefused(f'a persistent id that is not (\'storage\', type, key, '
                                f'location, numel) ({pid.describe()})')
        itemsize = self.element_size(fields[1].value)
        if itemsize is None:
            raise PickleRefused(f'a storage of type {bounded(fields[1].value)}')
        key = fields[2].value
        key = key.decode('ascii', 'replace') if isinstance(key, bytes) else key
        numel = fields[4].value
        if numel * itemsize > self.file_size:
            raise PickleRefused(f'storage {bounded(key)} declares {numel * itemsize} bytes, more '
                                f'than the whole {self.file_size}-byte file holds')
        self.declared[key] = max(self.declared.get(key, 0), numel * itemsize)
        return _Node('storage', itemsize, numel=numel)

    # -- the walk
    def run(self, data) -> None:
        try:
            for opcode, arg, _ in pickletools.genops(data):
                if self.step(opcode.name, arg):
                    return
        except (ValueError, EOFError) as error:
            if isinstance(error, PickleRefused):
                raise
            raise PickleTruncated(f'the pickle breaks off or is corrupt ({error})') from None
        raise PickleTruncated('the pickle ends before its STOP opcode')

    def step(self, op: str, arg) -> bool:  # noqa: C901 (one branch per opcode)
        if op in ('PROTO',):
            return False
        if op == 'STOP':
            self.pop()
            if self.stack or self.metastack:
                raise PickleRefused('values left on the stack at STOP')
            return True
        if op == 'GLOBAL':
            module, _, name = arg.partition(' ')
            # protocol 2 writes Python 2 names (__builtin__.getattr); unpicklers map them back
            module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module),
                                                             name))
            name = f'{module}.{name}'
            if not self.allowed(name):
                raise UnknownGlobal(f'it contains {bounded(name)}')
            self.push(_Node('global', name))
        elif op in ('BINUNICODE', 'SHORT_BINSTRING', 'BININT', 'BININT1', 'BININT2', 'LONG1',
                    'BINFLOAT'):
            self.push(_Node('const', arg))
        elif op in ('NONE', 'NEWTRUE', 'NEWFALSE'):
            self.push(_Node('const', {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}[op]))
        elif op == 'EMPTY_TUPLE':
            self.push(self.container('tuple'))
        elif op in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
            n = int(op[-1])
            items = [self.pop() for _ in range(n)][::-1]
            self.push(self.container('tuple', items))
        elif op == 'TUPLE':
            self.push(self.container('tuple', self.pop_mark()))
        elif op in ('EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET'):
            self.push(self.container({'EMPTY_LIST': 'list', 'EMPTY_DICT': 'dict',
                                      'EMPTY_SET': 'set'}[op]))
        elif op == 'MARK':
            self.metastack.append(self.stack)
            self.stack = []
        elif op == 'APPEND':
            item = self.pop()
            self.fill(self.top(), [item], op, keyed=False)
        elif op == 'APPENDS':
            items = self.pop_mark()
            self.fill(self.top(), items, op, keyed=False)
        elif op == 'SETITEM':
            value, key = self.pop(), self.pop()
            self.fill(self.top(), [key, value], op, keyed=True)
        elif op == 'SETITEMS':
            items = self.pop_mark()
            self.fill(self.top(), items, op, keyed=True)
        elif op == 'REDUCE':
            args, func = self.pop(), self.pop()
            self.push(self.call(func, args))
        elif op == 'NEWOBJ':
            args, cls = self.pop(), self.pop()
            if cls.kind != 'global':
                raise PickleRefused(f'NEWOBJ of a {cls.describe()}')
            self.push(self.container('object', [args], value=cls.value))
        elif op == 'BUILD':
            state, target = self.pop(), self.top()
            if target.kind != 'object':
                raise PickleRefused(f'BUILD on a {target.describe()}')
            if target.sealed:
                raise PickleRefused('BUILD on an object already placed in another one')
            self.fill_state(target, state)
        elif op == 'BINPERSID':
            self.push(self.persistent(self.pop()))
        elif op in ('BINPUT', 'LONG_BINPUT'):
            self.memo[arg] = self.top()
        elif op in ('BINGET', 'LONG_BINGET'):
            if arg not in self.memo:
                raise PickleRefused(f'a memo entry {arg} that was never stored')
            self.push(self.memo[arg])
        else:
            raise PickleRefused(f'the pickle opcode {op}, which checkpoints do not use')
        return False

    def top(self) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused('an opcode needs a value on an empty stack')
        return self.stack[-1]

    def fill_state(self, target: _Node, state: _Node) -> None:
        if target.value in _MUTABLE_CALLS and state.kind != 'dict':
            raise PickleRefused(f'BUILD of {target.value} with a {state.describe()}, not a dict')
        state.sealed = True
        target.depth = max(target.depth, state.depth + 1)
        target.size += state.size
        self.bound(target)


def scan_pickle(data, allowed: Callable[[str], bool],
                element_size: Callable[[str], Optional[int]], file_size: int) -> Dict[str, int]:
    """Walk one pickle in ``data`` (a binary stream, read from its current position up to and
    including STOP) without executing it; return ``{storage key: declared bytes}``.

    Args:
        data: a binary file object positioned at the pickle.
        allowed: whether a global ``module.name`` may appear.
        element_size: bytes per element of a storage type named by a global, None if that
            global is no storage type.
        file_size: bytes in the whole checkpoint file; bounds how far shared references may
            expand and how many bytes tensor views may make.

    Raises:
        PickleRefused: the reason, in words that name no object the file built.
        PickleTruncated: the stream ends or breaks before STOP.
    """
    scan = _Scan(allowed, element_size, file_size)
    scan.run(data)
    if scan.view_bytes > 4 * file_size + (1 << 20):
        raise PickleRefused(f'its tensors view {scan.view_bytes} bytes, far more than the '
                            f'{file_size} bytes of the file (storages shared by many views)')
    return scan.declared
