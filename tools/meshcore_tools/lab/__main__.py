from meshcore_tools.lab.cli import main

main()
