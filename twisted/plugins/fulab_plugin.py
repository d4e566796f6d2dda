from twisted.application.service import ServiceMaker


class LabServiceMaker(ServiceMaker):
    @property
    def options(self):
        """twistd parses `fulabd.tap.CommandLine`: a refused start says why in one line and exits 1."""
        from fulabd.tap import CommandLine

        return CommandLine


fulab = LabServiceMaker("fulabd", "fulabd.tap", "Receive, store and stream AI agent session transcripts", "fulab")
