"""The command line: click commands, options, help, what a person sees on stderr."""
