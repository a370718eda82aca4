"""No import cycle among the modules of sid2/ and spectral/ (module-level imports, read from the source)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
  mods = {}
  for pkg in ('sid2', 'spectral'):
    for d, _, files in os.walk(os.path.join(ROOT, pkg)):
      for f in files:
        if f.endswith('.py'):
          name = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, '.')
          mods[name[:-len('.__init__')] if name.endswith('.__init__') else name] = os.path.join(d, f)
  return mods


def _graph(mods):
  """module -> the modules of sid2/ and spectral/ it imports at module level."""
  graph = {}
  for name, path in mods.items():
    with open(path) as f:
      body = ast.parse(f.read()).body
    out = set()
    for node in body:
      if isinstance(node, ast.Import):
        out.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        out.update(f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in mods else node.module
                   for a in node.names)
    graph[name] = sorted(t for t in out if t in mods and t != name)
  return graph


def _find_cycle(graph):
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for t in graph[m]:
      if state.get(t) == 'open':
        return stack[stack.index(t):] + [t]
      if t not in state:
        found = visit(t)
        if found:
          return found
    state[m] = 'done'
    stack.pop()
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_no_module_level_import_cycle():
  graph = _graph(_modules())
  assert 'sid2.trainer' in graph and 'sid2.models.build' in graph
  assert _find_cycle(graph) is None


def test_the_toolkit_does_not_import_the_loop():
  """restore, export, generation, spectral's distillation and the sampler modules need no training loop."""
  graph = _graph(_modules())
  for name in ('sid2.restore', 'sid2.export', 'sid2.generation', 'sid2.sample_fns', 'sid2.models.build',
               'sid2.aux_losses', 'spectral.distill'):
    assert 'sid2.trainer' not in graph[name], name
